"""Data subjects' keys, and the encryption of personal fields with them (crypto-shredding).

Each data subject (a customer, a user: whatever an event's ``personal_data`` names as its
subject) has a random 256-bit key of its own, kept in ``{schema}.subject_keys``. A personal
field is stored as ``{"$encrypted": "<base64>", "subject": "<subject>"}``: the field's JSON
encrypted with AES-GCM under its subject's key, the subject as associated data. The envelope
names its subject, so it can be opened before the event's upcasters run (they see the
plaintext) and wherever an upcaster moved it. Forgetting a subject deletes its key, and
every stored copy of its personal fields becomes unreadable for good.

AES-GCM comes from pycryptodome (``eventkit[crypto]``), the library eventsourcing's own
cipher uses; it is imported only when a personal field is encrypted or decrypted.

Keys are cached per process for ``ttl_s`` seconds (``EVENTKIT_SUBJECT_KEY_TTL``, default
5): a subject forgotten in another process stays readable here for at most that long (the
process that forgets drops its own cached key at once). A rebuild of a million events then
reads each subject's key once per ``ttl_s``, not once per event.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
import weakref
from abc import ABC, abstractmethod
from typing import Any

import psycopg_pool
from psycopg import sql

from eventkit.infrastructure.database import retry_transient
from eventkit.infrastructure.errors import ConfigurationError, EventDecodingError

#: The keys of the JSON object that stands for an encrypted field's value.
ENCRYPTED = "$encrypted"
SUBJECT = "subject"
#: Stored payloads holding a sealed value contain these bytes (a payload without them is
#: decoded without looking for sealed values).
MARKER = b'"$encrypted"'
_NONCE = 12
_TAG = 16
_KEY_BYTES = 32
_DEFAULT_TTL_S = 5.0


class SubjectKeys(ABC):
    """Where subjects' keys are kept: one key per subject, made on first use."""

    @abstractmethod
    def key(self, subject: str, *, create: bool) -> bytes | None:
        """The subject's key; made and kept first when ``create`` and there is none; None
        when there is none (never made, or forgotten)."""

    @abstractmethod
    def forget(self, subject: str) -> bool:
        """Delete the subject's key; True when there was one."""


class MemorySubjectKeys(SubjectKeys):
    """Keys in this process's memory, for tests and in-memory applications."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def key(self, subject: str, *, create: bool) -> bytes | None:
        with self._lock:
            if create and subject not in self._keys:
                self._keys[subject] = secrets.token_bytes(_KEY_BYTES)
            return self._keys.get(subject)

    def forget(self, subject: str) -> bool:
        with self._lock:
            return self._keys.pop(subject, None) is not None


class PostgresSubjectKeys(SubjectKeys):
    """Keys in ``{schema}.subject_keys``, cached here for ``ttl_s`` seconds."""

    def __init__(
        self, pool: psycopg_pool.ConnectionPool, schema: str, *, ttl_s: float = _DEFAULT_TTL_S
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.ttl_s = ttl_s
        table = sql.Identifier(schema, "subject_keys")
        self._select = sql.SQL("SELECT key FROM {} WHERE subject = %s").format(table)
        # Made once: a concurrent maker's key wins, and both read the one kept.
        self._create = sql.SQL(
            "WITH made AS (INSERT INTO {t} (subject, key) VALUES (%s, %s) "
            "ON CONFLICT (subject) DO NOTHING RETURNING key) "
            "SELECT key FROM made UNION ALL SELECT key FROM {t} WHERE subject = %s LIMIT 1"
        ).format(t=table)
        self._delete = sql.SQL("DELETE FROM {} WHERE subject = %s").format(table)
        self._cache: dict[str, tuple[float, bytes | None]] = {}
        self._lock = threading.Lock()
        _instances.add(self)

    def drop_cached(self, subject: str) -> None:
        """Forget this process's cached key of ``subject``."""
        with self._lock:
            self._cache.pop(subject, None)

    def key(self, subject: str, *, create: bool) -> bytes | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(subject)
        if cached is not None and now - cached[0] < self.ttl_s and (cached[1] or not create):
            return cached[1]

        def read() -> bytes | None:
            with self.pool.connection() as conn:
                if create:
                    made = secrets.token_bytes(_KEY_BYTES)
                    row = conn.execute(self._create, (subject, made, subject)).fetchone()
                else:
                    row = conn.execute(self._select, (subject,)).fetchone()
            return None if row is None else bytes(row[0])

        found = retry_transient(
            read, what=f"reading the key of data subject {subject!r}", within_s=self.pool.timeout
        )
        with self._lock:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[subject] = (now, found)
        return found

    def forget(self, subject: str) -> bool:
        """Delete the subject's key, and drop it from every key store's cache in this
        process (others drop it within their ``ttl_s``)."""

        def delete() -> bool:
            with self.pool.connection() as conn:
                return conn.execute(self._delete, (subject,)).rowcount > 0

        deleted = retry_transient(
            delete, what=f"forgetting data subject {subject!r}", within_s=self.pool.timeout
        )
        for keys in list(_instances):
            keys.drop_cached(subject)
        return deleted


_instances: weakref.WeakSet[PostgresSubjectKeys] = weakref.WeakSet()
_shared: dict[tuple[int, str], PostgresSubjectKeys] = {}
_shared_lock = threading.Lock()


def shared_subject_keys(
    pool: psycopg_pool.ConnectionPool, schema: str, ttl_s: float = _DEFAULT_TTL_S
) -> PostgresSubjectKeys:
    """The process's key store for ``schema`` on ``pool``: one cache for all its mappers."""
    with _shared_lock:
        found = _shared.get((id(pool), schema))
        if found is None or found.pool is not pool:
            found = _shared[(id(pool), schema)] = PostgresSubjectKeys(pool, schema, ttl_s=ttl_s)
        return found


def seal(key: bytes, subject: str, plaintext: bytes) -> dict[str, str]:
    """``plaintext`` sealed under the subject's ``key`` (AES-256-GCM, a fresh nonce), as
    stored."""
    aes = _aes()
    nonce = secrets.token_bytes(_NONCE)
    cipher = aes.new(key, aes.MODE_GCM, nonce=nonce, mac_len=_TAG)
    cipher.update(subject.encode())
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return {ENCRYPTED: base64.b64encode(nonce + tag + ciphertext).decode(), SUBJECT: subject}


def unseal(key: bytes, sealed: dict[str, Any], where: str) -> bytes:
    """The plaintext of a value :func:`seal` sealed; EventDecodingError naming ``where``
    when it was tampered with or sealed under another key."""
    aes = _aes()
    try:
        data = base64.b64decode(sealed[ENCRYPTED], validate=True)
        nonce, tag, ciphertext = data[:_NONCE], data[_NONCE : _NONCE + _TAG], data[_NONCE + _TAG :]
        cipher = aes.new(key, aes.MODE_GCM, nonce=nonce, mac_len=_TAG)
        cipher.update(str(sealed[SUBJECT]).encode())
        plaintext: bytes = cipher.decrypt_and_verify(ciphertext, tag)
    except (ValueError, TypeError, KeyError) as e:
        raise EventDecodingError(
            f"cannot decrypt {where}: the value was changed or sealed under another key ({e})"
        ) from e
    return plaintext


def is_sealed(value: Any) -> bool:
    """Whether a stored field's value is a sealed one."""
    return (
        isinstance(value, dict)
        and len(value) == 2
        and isinstance(value.get(ENCRYPTED), str)
        and isinstance(value.get(SUBJECT), str)
    )


def _aes() -> Any:
    try:
        from Crypto.Cipher import AES
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ConfigurationError(
            "personal data is encrypted with pycryptodome: pip install 'eventkit[crypto]'"
        ) from e
    return AES

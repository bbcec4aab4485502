"""Settings read from the environment, in one place."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from eventkit.infrastructure.errors import UsageError


def default_home(cwd: Path | None = None) -> Path:
    """Where the embedded PostgreSQL keeps its data when ``EVENTKIT_HOME`` is unset:
    ``.eventkit`` in the project's folder, the nearest one from the current directory up
    that holds a pyproject.toml (else the current directory), never inside the installed
    package."""
    cwd = Path.cwd() if cwd is None else cwd
    for folder in (cwd, *cwd.parents):
        if (folder / "pyproject.toml").is_file():
            return folder / ".eventkit"
    return cwd / ".eventkit"


_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def is_plain_name(name: str) -> bool:
    """Whether ``name`` is a plain PostgreSQL name (lower-case letters, digits and
    underscores, starting with a letter or '_', at most 63 characters)."""
    return _SCHEMA_NAME.match(name) is not None


_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Settings:
    """How eventkit reaches its database, and where it keeps local state.

    ``database_url`` is ``None`` when ``DATABASE_URL`` is unset: eventkit then starts and
    uses its own embedded PostgreSQL, with data under ``home``.
    """

    database_url: str | None
    schema: str = "eventkit"
    home: Path = field(default_factory=default_home)
    pool_min_size: int = 1
    pool_max_size: int = 16
    #: Send a notification hint with every append (``EVENTKIT_NOTIFY=1``), so idle
    #: followers wake at once. Off by default: NOTIFY takes a server-wide lock at commit
    #: (see docs/architecture.md); followers always poll as well.
    notify: bool = False
    #: Where reaction messages go (``BROKER_URL``): ``amqp://`` for RabbitMQ, ``redis://``
    #: for Redis; unset (or ``postgres``) for the PostgreSQL broker in eventkit's schema.
    broker_url: str | None = None
    #: Named prepared statements (``EVENTKIT_PREPARED_STATEMENTS=off`` turns them off):
    #: appends run a statement prepared once per connection, and psycopg prepares any
    #: statement it has run 5 times. Turn them off for writers that reach PostgreSQL through
    #: PgBouncer older than 1.21 in transaction mode (see docs/scaling.md).
    prepared_statements: bool = True
    #: Seconds a process keeps a data subject's key cached (``EVENTKIT_SUBJECT_KEY_TTL``):
    #: how long after ``eventkit forget`` another process may still decrypt the subject's
    #: personal fields (see eventkit.infrastructure.subjects).
    subject_key_ttl_s: float = 5.0
    #: Trace appends, projection batches and reactions with OpenTelemetry
    #: (``EVENTKIT_TRACING=on``, with ``eventkit[otel]`` installed). Off, nothing of
    #: OpenTelemetry is imported.
    tracing: bool = False
    #: Create or upgrade the schema when a writer (an application, the workers, the demo)
    #: first connects (``EVENTKIT_MIGRATE``, on by default, for development). Off (for
    #: production), only ``eventkit db migrate`` changes the schema and a process that finds
    #: it missing or behind refuses to start, saying so. Read-only commands never migrate.
    migrate: bool = True
    #: Group commit (``EVENTKIT_GROUP_COMMIT``, on by default): saves that arrive together
    #: in one process are appended in one transaction, each keeping its own outcome; a save
    #: waits at most 1 ms for company, and none when nothing else is being appended (see
    #: eventkit.infrastructure.groupcommit).
    group_commit: bool = True
    #: Seconds a writer's call (an append, a read of a stream) may wait for the database
    #: before it fails with DatabaseUnavailableError (``EVENTKIT_WRITE_TIMEOUT``): the
    #: bound of its retries and of a wait for a pooled connection.
    write_timeout_s: float = 5.0
    #: Seconds to wait for a first connection to PostgreSQL (``EVENTKIT_CONNECT_TIMEOUT``)
    #: before failing with PostgreSQL's own reason ("connection refused", "database ... does
    #: not exist"). A reason that waiting cannot change (no such database or role, a wrong
    #: password) fails at once.
    connect_timeout_s: float = 5.0
    #: Where followers read the log (``EVENTKIT_READ_URL``): a streaming replica (hot
    #: standby) of ``database_url``, so that catch-up reads leave the primary's CPU and I/O
    #: to the writers; views, positions, leases and ledgers are still written on the
    #: primary. None: followers read the primary (see docs/scaling.md, "Followers on a
    #: standby").
    read_url: str | None = None

    def __post_init__(self) -> None:
        if not _SCHEMA_NAME.match(self.schema):
            raise UsageError(
                f"EVENTKIT_SCHEMA={self.schema!r} is not a plain PostgreSQL schema name: use "
                "lower-case letters, digits and underscores, starting with a letter or '_'"
            )
        if self.schema == "information_schema" or self.schema.startswith("pg_"):
            raise UsageError(
                f"EVENTKIT_SCHEMA={self.schema!r} is one of PostgreSQL's system schemas "
                "(information_schema, pg_*): choose a schema of eventkit's own"
            )
        if not self.connect_timeout_s > 0:
            raise UsageError(
                f"EVENTKIT_CONNECT_TIMEOUT={self.connect_timeout_s:g} must be more than 0 seconds"
            )
        if not 1 <= self.pool_min_size <= self.pool_max_size:
            raise UsageError(
                f"pool sizes must satisfy 1 <= EVENTKIT_POOL_MIN_SIZE ({self.pool_min_size}) "
                f"<= EVENTKIT_POOL_MAX_SIZE ({self.pool_max_size})"
            )
        if not self.write_timeout_s > 0:
            raise UsageError(
                f"EVENTKIT_WRITE_TIMEOUT='{self.write_timeout_s:g}' must be more than 0 seconds"
            )

    #: Every environment variable :meth:`from_env` reads.
    ENV_NAMES: ClassVar[tuple[str, ...]] = (
        "DATABASE_URL",
        "EVENTKIT_SCHEMA",
        "EVENTKIT_HOME",
        "EVENTKIT_POOL_MIN_SIZE",
        "EVENTKIT_POOL_MAX_SIZE",
        "EVENTKIT_NOTIFY",
        "BROKER_URL",
        "EVENTKIT_PREPARED_STATEMENTS",
        "EVENTKIT_SUBJECT_KEY_TTL",
        "EVENTKIT_TRACING",
        "EVENTKIT_MIGRATE",
        "EVENTKIT_GROUP_COMMIT",
        "EVENTKIT_WRITE_TIMEOUT",
        "EVENTKIT_CONNECT_TIMEOUT",
        "EVENTKIT_READ_URL",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            schema=env.get("EVENTKIT_SCHEMA", "eventkit"),
            home=Path(env["EVENTKIT_HOME"]) if env.get("EVENTKIT_HOME") else default_home(),
            pool_min_size=_int(env, "EVENTKIT_POOL_MIN_SIZE", 1),
            pool_max_size=_int(env, "EVENTKIT_POOL_MAX_SIZE", 16),
            notify=_flag(env, "EVENTKIT_NOTIFY", False),
            broker_url=env.get("BROKER_URL") or None,
            prepared_statements=_flag(env, "EVENTKIT_PREPARED_STATEMENTS", True),
            subject_key_ttl_s=_float(env, "EVENTKIT_SUBJECT_KEY_TTL", 5.0),
            tracing=_flag(env, "EVENTKIT_TRACING", False),
            migrate=_flag(env, "EVENTKIT_MIGRATE", True),
            group_commit=_flag(env, "EVENTKIT_GROUP_COMMIT", True),
            write_timeout_s=_float(env, "EVENTKIT_WRITE_TIMEOUT", 5.0),
            connect_timeout_s=_float(env, "EVENTKIT_CONNECT_TIMEOUT", 5.0),
            read_url=env.get("EVENTKIT_READ_URL") or None,
        )

    @property
    def notify_channel(self) -> str | None:
        """The LISTEN/NOTIFY channel of this schema's log, when hints are on."""
        return f"eventkit_{self.schema}" if self.notify else None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a whole number") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise UsageError(f"{name}={raw!r} is negative")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in _ON:
        return True
    if raw in _OFF:
        return False
    raise UsageError(
        f"{name}={raw!r} is neither on nor off (use one of {', '.join(sorted(_ON | _OFF))})"
    )


#: ``user:password@`` in a URL.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
#: ``password=...`` in a keyword DSN (``password=s3cret``, ``password = 'a b'``) or a URL's
#: query (``?password=s3cret&...``).
_KEYWORD_PASSWORD = re.compile(
    r"(\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&'\"]+)", re.IGNORECASE
)
#: Environment variables whose values (or whose URLs' passwords) are secrets.
_SECRET_ENV = ("PGPASSWORD", "DATABASE_URL", "BROKER_URL", "EVENTKIT_READ_URL")


def secrets(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """The passwords eventkit's environment holds: ``PGPASSWORD`` and those inside
    ``DATABASE_URL``, ``BROKER_URL`` and ``EVENTKIT_READ_URL`` (URL or keyword form), for
    :func:`redact` to remove wherever they appear, even where no ``password=`` precedes
    them."""
    env = os.environ if env is None else env
    return _secrets(tuple(env.get(name) or "" for name in _SECRET_ENV))


@functools.lru_cache(maxsize=8)
def _secrets(values: tuple[str, ...]) -> frozenset[str]:
    from urllib.parse import parse_qs, unquote, urlsplit

    found = set()
    for name, value in zip(_SECRET_ENV, values, strict=True):
        if name == "PGPASSWORD":
            found.add(value)
            continue
        if "://" in value:
            parts = urlsplit(value)
            with contextlib.suppress(ValueError):
                found.add(unquote(parts.password or ""))
            found.update(parse_qs(parts.query).get("password", []))
        for match in _KEYWORD_PASSWORD.finditer(value):
            found.add(match.group(0)[len(match.group(1)) :].strip("'"))
    # A very short password would redact ordinary text: the patterns still catch it in a DSN.
    return frozenset(s for s in found if len(s) >= 4)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Return ``text`` (a DSN, a message, a log line) with every password replaced by
    ``***``: a URL's ``user:password@``, a keyword DSN's or a URL query's ``password=``, and
    any password the environment holds (:func:`secrets`). The one redaction every error,
    log line and status output goes through."""
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _KEYWORD_PASSWORD.sub(r"\1***", text)
    for secret in secrets(env):
        text = text.replace(secret, "***")
    return text

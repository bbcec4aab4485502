"""Settings read from the environment, in one place."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from eventkit.infrastructure.errors import ConfigurationError


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

    def __post_init__(self) -> None:
        if not _SCHEMA_NAME.match(self.schema):
            raise ConfigurationError(
                f"EVENTKIT_SCHEMA={self.schema!r} is not a plain PostgreSQL schema name: use "
                "lower-case letters, digits and underscores, starting with a letter or '_'"
            )
        if not 1 <= self.pool_min_size <= self.pool_max_size:
            raise ConfigurationError(
                f"pool sizes must satisfy 1 <= EVENTKIT_POOL_MIN_SIZE ({self.pool_min_size}) "
                f"<= EVENTKIT_POOL_MAX_SIZE ({self.pool_max_size})"
            )
        if not self.write_timeout_s > 0:
            raise ConfigurationError(
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
            notify=env.get("EVENTKIT_NOTIFY", "").lower() in _ON,
            broker_url=env.get("BROKER_URL") or None,
            prepared_statements=_flag(env, "EVENTKIT_PREPARED_STATEMENTS", True),
            subject_key_ttl_s=_float(env, "EVENTKIT_SUBJECT_KEY_TTL", 5.0),
            tracing=_flag(env, "EVENTKIT_TRACING", False),
            migrate=_flag(env, "EVENTKIT_MIGRATE", True),
            group_commit=_flag(env, "EVENTKIT_GROUP_COMMIT", True),
            write_timeout_s=_float(env, "EVENTKIT_WRITE_TIMEOUT", 5.0),
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
        raise ConfigurationError(f"{name}={raw!r} is not a whole number") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigurationError(f"{name}={raw!r} is negative")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in _ON:
        return True
    if raw in _OFF:
        return False
    raise ConfigurationError(f"{name}={raw!r} is neither on nor off")


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for logs and messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)

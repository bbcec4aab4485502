"""eventsourcing's infrastructure factory for eventkit.

Select it with ``PERSISTENCE_MODULE=infrastructure.factory``.

An ``Application`` constructed with that setting records its events with
:class:`PostgresEventRecorder` and maps them with :class:`PydanticMapper`. The database is
``DATABASE_URL`` (or the embedded server when it is unset) and the schema ``EVENTKIT_SCHEMA``
(default ``eventkit``); these and every other eventkit setting (``Settings.ENV_NAMES``,
docs/operations.md) are read through eventsourcing's ``Environment``, so an application's
``env`` and an application-specific ``<APPNAME>_DATABASE_URL`` win. Pools are shared per
process and URL, and each schema is migrated once per process, on first use, unless
``EVENTKIT_MIGRATE=off``: then it is only checked, and a schema missing or behind is
refused with the command that fixes it. Operator commands use :func:`existing_pool`, which
never starts the embedded server nor creates or changes a schema.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

import psycopg_pool
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    Mapper,
    ProcessRecorder,
    TrackingRecorder,
    Transcoder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic

from eventkit.infrastructure.database import create_pool, resolve_database_url
from eventkit.infrastructure.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    SchemaNotReadyError,
    UnsupportedFollowerError,
)
from eventkit.infrastructure.migrations import migrate as migrate_schema
from eventkit.infrastructure.migrations import require_current
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings, redact
from eventkit.infrastructure.snapshots import PostgresSnapshotRecorder
from eventkit.infrastructure.subjects import shared_subject_keys
from eventkit.infrastructure.transcoding import PydanticJSONTranscoder, PydanticMapper

_lock = threading.Lock()
_pools: dict[tuple[str, bool], psycopg_pool.ConnectionPool] = {}
#: The (url, schema) pairs this process found (or made) up to date.
_ready: set[tuple[str, str]] = set()


def settings_of(env: Environment) -> Settings:
    """eventkit's settings from an application's environment (its ``env`` over the
    process's), every variable that ``Settings.from_env`` reads."""
    values = {name: env.get(name) for name in Settings.ENV_NAMES}
    return Settings.from_env({k: v for k, v in values.items() if v is not None})


def shared_pool(
    settings: Settings, *, start: bool = True, migrate: bool | None = None
) -> tuple[psycopg_pool.ConnectionPool, str]:
    """The process's pool for the settings' database (opened on first use), and its URL.

    A writer's call (the defaults) starts the embedded server when ``DATABASE_URL`` is unset
    and migrates the schema as ``EVENTKIT_MIGRATE`` says; ``start=False`` never starts a
    server and ``migrate=False`` only checks that the schema is up to date
    (:func:`existing_pool`). One pool per URL, and another for the same URL without
    prepared statements (``EVENTKIT_PREPARED_STATEMENTS=off``): that setting changes what
    runs on the pool's connections, so a pool made for the other value is never handed
    out."""
    url = resolve_database_url(settings, start=start)
    key = (url, settings.prepared_statements)
    with _lock:
        pool = _pools.get(key)
        if pool is None or pool.closed:
            pool = create_pool(url, settings)
            _pools[key] = pool
        if (url, settings.schema) not in _ready:
            with pool.connection() as conn:
                if settings.migrate if migrate is None else migrate:
                    migrate_schema(conn, settings.schema)
                else:
                    require_current(conn, settings.schema)
            _ready.add((url, settings.schema))
    return pool, url


def read_pool(settings: Settings) -> psycopg_pool.ConnectionPool | None:
    """The process's pool on ``EVENTKIT_READ_URL`` (a streaming replica of the database),
    where followers read the log; None when it is unset. Never migrates (a standby is
    read-only): its schema must be current, which it is once the primary's migrations have
    replayed there; an error names the read URL (redacted)."""
    url = settings.read_url
    if url is None:
        return None
    key = (url, settings.prepared_statements)
    with _lock:
        pool = _pools.get(key)
        if pool is None or pool.closed:
            try:
                pool = create_pool(url, settings, name="eventkit-read")
            except DatabaseUnavailableError as e:
                raise DatabaseUnavailableError(
                    f"EVENTKIT_READ_URL, where followers read the log: {e}"
                ) from None
            _pools[key] = pool
        if (url, settings.schema) not in _ready:
            with pool.connection() as conn:
                try:
                    require_current(conn, settings.schema)
                except SchemaNotReadyError as e:
                    raise SchemaNotReadyError(
                        f"EVENTKIT_READ_URL ({redact(url)}), where followers read the log: {e}"
                    ) from None
            _ready.add((url, settings.schema))
    return pool


def read_recorder(settings: Settings) -> PostgresEventRecorder | None:
    """A recorder that reads the log on ``EVENTKIT_READ_URL`` (followers' scans), or None
    when it is unset: followers then read through the primary's recorder."""
    pool = read_pool(settings)
    return None if pool is None else PostgresEventRecorder(pool, settings.schema)


def existing_pool(settings: Settings) -> tuple[psycopg_pool.ConnectionPool, str]:
    """The process's pool for an operator command: never starts the embedded server, never
    creates or migrates the schema; a stopped server or a schema missing or behind is an
    error saying what to run."""
    return shared_pool(settings, start=False, migrate=False)


def application_env(settings: Settings | None = None) -> dict[str, str]:
    """The eventsourcing environment for an application that records with eventkit.

    Resolves the database first (starting the embedded server when ``DATABASE_URL`` is
    unset) and migrates the schema, so every process that calls this is ready to write.
    """
    settings = settings or Settings.from_env()
    _, url = shared_pool(settings)
    return {
        "PERSISTENCE_MODULE": __name__,
        "DATABASE_URL": url,
        "EVENTKIT_SCHEMA": settings.schema,
        "EVENTKIT_POOL_MIN_SIZE": str(settings.pool_min_size),
        "EVENTKIT_POOL_MAX_SIZE": str(settings.pool_max_size),
    }


def close_pools() -> None:
    """Close every pool this process opened."""
    with _lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()
        _ready.clear()


atexit.register(close_pools)


class Factory(InfrastructureFactory[TrackingRecorder]):
    """Constructs eventkit's recorder and mapper for an eventsourcing ``Application``."""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        self.settings = settings_of(self.env)
        self.pool, self.url = shared_pool(self.settings)

    def transcoder(self) -> Transcoder:
        topic = self.env.get(self.TRANSCODER_TOPIC)
        if topic:
            transcoder_class: type[Transcoder] = resolve_topic(topic)
            return transcoder_class()
        return PydanticJSONTranscoder()

    def mapper(
        self,
        transcoder: Transcoder | None = None,
        mapper_class: type[Mapper[Any]] | None = None,
    ) -> Mapper[Any]:
        if mapper_class is None and not self.env.get(self.MAPPER_TOPIC):
            mapper_class = PydanticMapper
        mapper = super().mapper(transcoder=transcoder, mapper_class=mapper_class)
        if isinstance(mapper, PydanticMapper) and mapper.subject_keys is None:
            mapper.subject_keys = shared_subject_keys(
                self.pool, self.settings.schema, self.settings.subject_key_ttl_s
            )
        return mapper

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        if purpose == "snapshots":
            return PostgresSnapshotRecorder(self.pool, self.settings.schema)
        if purpose != "events":
            raise ConfigurationError(
                f"eventkit records events and snapshots, not {purpose!r} (the purpose an "
                "eventsourcing application asked its factory for)"
            )
        return self.application_recorder()

    def application_recorder(self) -> ApplicationRecorder:
        return PostgresEventRecorder(
            self.pool,
            self.settings.schema,
            notify_channel=self.settings.notify_channel,
            tracing=self.settings.tracing,
            group_commit=self.settings.group_commit,
        )

    def tracking_recorder(
        self, tracking_recorder_class: type[TrackingRecorder] | None = None
    ) -> TrackingRecorder:
        raise UnsupportedFollowerError("eventsourcing's TrackingRecorder on eventkit")

    def process_recorder(self) -> ProcessRecorder:
        raise UnsupportedFollowerError("eventsourcing's ProcessRecorder on eventkit")


def mapper_for(
    pool: psycopg_pool.ConnectionPool, schema: str, settings: Settings | None = None
) -> PydanticMapper:
    """eventkit's mapper for the events of ``schema``, with its data subjects' keys."""
    ttl_s = (settings or Settings.from_env()).subject_key_ttl_s
    return PydanticMapper(subject_keys=shared_subject_keys(pool, schema, ttl_s))


def event_recorder(app: Any) -> PostgresEventRecorder:
    """The eventkit recorder of an eventsourcing ``Application`` built with this factory."""
    recorder = app.recorder
    if not isinstance(recorder, PostgresEventRecorder):
        raise ConfigurationError(
            f"{type(app).__name__} records with {type(recorder).__name__}, not eventkit's "
            "recorder; construct it with PERSISTENCE_MODULE=infrastructure.factory"
        )
    return recorder


__all__ = [
    "Factory",
    "application_env",
    "close_pools",
    "event_recorder",
    "existing_pool",
    "mapper_for",
    "shared_pool",
]

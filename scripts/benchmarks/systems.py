"""The systems the append benchmark compares, each in a fresh schema of the same server.

* ``eventkit``: an eventsourcing ``Application`` with ``PERSISTENCE_MODULE=infrastructure.factory``
  and group commit off.
* ``eventkit+group``: the same with group commit on (``EVENTKIT_GROUP_COMMIT=on``): saves
  that arrive together append in one transaction.
* ``eventkit+notify``: the same, but its recorder sends ``pg_notify`` in every write
  transaction, to show what ``NOTIFY`` costs.
* ``eventkit+key``: the same, every save with an idempotency key of its own, to show what
  recording the key costs.
* ``eventsourcing``: an ``Application`` with eventsourcing's own PostgreSQL recorder
  (``PERSISTENCE_MODULE=eventsourcing.postgres``) and its default mapper.
"""

from __future__ import annotations

import getpass
import itertools
from collections.abc import Mapping
from typing import Any
from uuid import UUID, uuid4

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import ApplicationRecorder
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from eventkit.domain.application import Application as EventkitApplication
from eventkit.infrastructure.errors import ConfigurationError
from eventkit.infrastructure.factory import Factory
from eventkit.infrastructure.migrations import migrate
from eventkit.infrastructure.recorder import PostgresEventRecorder

EVENTKIT = "eventkit"
EVENTKIT_NOTIFY = "eventkit+notify"
EVENTKIT_KEY = "eventkit+key"
EVENTKIT_GROUP = "eventkit+group"
EVENTSOURCING = "eventsourcing"
SYSTEMS = (EVENTKIT, EVENTKIT_NOTIFY, EVENTKIT_KEY, EVENTKIT_GROUP, EVENTSOURCING)

NOTIFY_CHANNEL = "eventkit"
#: Connections one process may open per system: enough for 16 writer threads.
POOL_MAX_SIZE = 40


class EventkitBench(EventkitApplication):
    """An application that records with eventkit (eventkit's application base class)."""


class NotifyingEventkitBench(EventkitApplication):
    """An application that records with eventkit and sends ``NOTIFY`` with every save."""

    def construct_recorder(self) -> ApplicationRecorder:
        factory = self.factory
        if not isinstance(factory, Factory):
            raise ConfigurationError(
                f"{type(self).__name__} needs PERSISTENCE_MODULE=infrastructure.factory"
            )
        return PostgresEventRecorder(
            factory.pool, factory.settings.schema, notify_channel=NOTIFY_CHANNEL
        )


class KeyedEventkitBench(EventkitApplication):
    """An application that records with eventkit, every save under an idempotency key."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self._keys = itertools.count()
        self._prefix = uuid4().hex

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        return super().save(*objs, idempotency_key=f"{self._prefix}-{next(self._keys)}", **kwargs)


class PlainBench(Application[UUID]):
    """An application that records with eventsourcing's PostgreSQL recorder."""


_APPS: dict[str, type[Application[UUID]]] = {
    EVENTKIT: EventkitBench,
    EVENTKIT_NOTIFY: NotifyingEventkitBench,
    EVENTKIT_KEY: KeyedEventkitBench,
    EVENTKIT_GROUP: EventkitBench,
    EVENTSOURCING: PlainBench,
}


def build_app(system: str, env: Mapping[str, str]) -> Application[UUID]:
    """Construct the application of ``system`` with its environment."""
    return _APPS[system](env=dict(env))


def eventkit_env(url: str, schema: str, *, group_commit: bool = False) -> dict[str, str]:
    """The environment of an eventkit application in ``schema``."""
    return {
        "PERSISTENCE_MODULE": "eventkit.infrastructure.factory",
        "DATABASE_URL": url,
        "EVENTKIT_SCHEMA": schema,
        "EVENTKIT_POOL_MAX_SIZE": str(POOL_MAX_SIZE),
        "EVENTKIT_GROUP_COMMIT": "on" if group_commit else "off",
    }


def eventsourcing_env(url: str, schema: str, pool_size: int = POOL_MAX_SIZE) -> dict[str, str]:
    """The environment of an eventsourcing application on the server of ``url``, in ``schema``.

    eventsourcing takes the connection as separate settings; for eventkit's embedded
    server the host is the socket directory. Its database functions stay off (with them,
    recorders in one schema overwrite one shared insert function).
    """
    info: dict[str, Any] = conninfo_to_dict(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(info.get("dbname") or info.get("user") or getpass.getuser()),
        "POSTGRES_HOST": str(info.get("host") or ""),
        "POSTGRES_PORT": str(info.get("port") or "5432"),
        "POSTGRES_USER": str(info.get("user") or getpass.getuser()),
        "POSTGRES_PASSWORD": str(info.get("password") or ""),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": "1",
        "POSTGRES_MAX_OVERFLOW": str(pool_size - 1),
        "POSTGRES_ENABLE_DB_FUNCTIONS": "no",
    }


def schema_names(run_id: str) -> dict[str, str]:
    """A fresh schema name per system for the run ``run_id``."""
    return {system: f"bench_{run_id}_{_short(system)}" for system in SYSTEMS}


def create_schemas(url: str, schemas: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Create each system's schema and tables; return each system's environment.

    The tables are created here, once, so worker processes only connect.
    """
    envs = {
        EVENTKIT: eventkit_env(url, schemas[EVENTKIT]),
        EVENTKIT_NOTIFY: eventkit_env(url, schemas[EVENTKIT_NOTIFY]),
        EVENTKIT_KEY: eventkit_env(url, schemas[EVENTKIT_KEY]),
        EVENTKIT_GROUP: eventkit_env(url, schemas[EVENTKIT_GROUP], group_commit=True),
        EVENTSOURCING: eventsourcing_env(url, schemas[EVENTSOURCING]),
    }
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, schemas[EVENTKIT])
        migrate(conn, schemas[EVENTKIT_NOTIFY])
        migrate(conn, schemas[EVENTKIT_KEY])
        migrate(conn, schemas[EVENTKIT_GROUP])
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schemas[EVENTSOURCING])))
    build_app(EVENTSOURCING, envs[EVENTSOURCING]).close()
    # Workers must not race to create the same tables and types.
    envs[EVENTSOURCING]["CREATE_TABLE"] = "no"
    return envs


def drop_schemas(url: str, schemas: list[str]) -> None:
    """Drop the benchmark's schemas and everything in them."""
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _short(system: str) -> str:
    return {
        EVENTKIT: "ek",
        EVENTKIT_NOTIFY: "ekn",
        EVENTKIT_KEY: "ekk",
        EVENTKIT_GROUP: "ekg",
        EVENTSOURCING: "es",
    }[system]

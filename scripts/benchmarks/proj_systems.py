"""The two projection runtimes the ``catchup`` and ``live`` benchmarks compare, and the one
view both fill.

* ``eventkit``: events saved by an ``Application`` with ``PERSISTENCE_MODULE=infrastructure.
  factory``; :class:`StreamCounts`, an eventkit :class:`~projections.projection.Projection`,
  run by a :class:`~projections.follower.Follower` (or :func:`~projections.rebuild.rebuild`).
* ``eventsourcing``: events saved by an ``Application`` with eventsourcing's PostgreSQL
  recorder; :class:`PlainStreamCounts`, an ``eventsourcing.projection.Projection``, run by
  eventsourcing's ``ProjectionRunner`` into :class:`PlainStreamCountsView`, a
  ``PostgresTrackingRecorder`` with one more table, written the way eventsourcing's own
  examples write a view (view rows and tracking record in one transaction per event).

Both views keep one row per stream (its event count and last version), changed by the same
upsert, one statement per event: the comparison is of the runtimes, not of the handlers.
Every case runs in a fresh schema of the same server, dropped at the end. (The environment
helpers repeat those of the append suite's ``systems`` module, so the suites can change
independently.)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, ClassVar, LiteralString
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import Projection as PlainProjection
from psycopg import sql

from eventkit.benchmarks import systems
from eventkit.benchmarks.aggregates import Account
from eventkit.domain.application import Application as EventkitApplication
from eventkit.infrastructure.migrations import migrate
from eventkit.infrastructure.settings import redact
from eventkit.projections.projection import Context, Projection, Table, handles

EVENTKIT = "eventkit"
EVENTSOURCING = "eventsourcing"
SYSTEMS = (EVENTKIT, EVENTSOURCING)
#: Each system's short name, for schema names.
SHORT = {EVENTKIT: "ek", EVENTSOURCING: "es"}

#: Connections one writer process may open.
WRITER_POOL_SIZE = 4

#: The one statement each event costs in either view.
_UPSERT: LiteralString = (
    "INSERT INTO {stream_counts} AS c (stream_id, events, last_version) VALUES (%s, 1, %s) "
    "ON CONFLICT (stream_id) DO UPDATE SET events = c.events + 1, "
    "last_version = excluded.last_version"
)


class EventkitLog(EventkitApplication):
    """Saves the benchmark's events with eventkit's application base class and recorder."""


class PlainLog(Application[UUID]):
    """Saves the benchmark's events with eventsourcing's PostgreSQL recorder."""


class StreamCounts(Projection):
    """eventkit's view: one row per stream, its event count and last version."""

    name = "bench_stream_counts"
    tables = (
        Table(
            "stream_counts",
            "CREATE TABLE {table} (stream_id uuid PRIMARY KEY, events bigint NOT NULL,"
            " last_version bigint NOT NULL)",
        ),
    )

    @handles
    def opened(self, event: Account.Opened, context: Context) -> None:
        self._count(event, context)

    @handles
    def noted(self, event: Account.Noted, context: Context) -> None:
        self._count(event, context)

    @staticmethod
    def _count(event: Account.Event, context: Context) -> None:
        context.execute(_UPSERT, (event.originator_id, event.originator_version))


class PlainStreamCountsView(PostgresTrackingRecorder):
    """eventsourcing's view: the same table, beside its tracking table."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        table = sql.Identifier(self.datastore.schema, "stream_counts")
        self.sql_create_statements.append(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (stream_id uuid PRIMARY KEY,"
                " events bigint NOT NULL, last_version bigint NOT NULL)"
            ).format(table)
        )
        self.upsert_statement = sql.SQL(_UPSERT).format(stream_counts=table)

    def count_with_tracking(self, stream_id: UUID, version: int, tracking: Tracking) -> None:
        """Count one event of ``stream_id`` and record ``tracking``, in one transaction."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self.upsert_statement, (stream_id, version), prepare=True)
            self._insert_tracking(curs, tracking)


class PlainStreamCounts(PlainProjection[PlainStreamCountsView]):
    """eventsourcing's projection: every event counted in the view, one transaction each.

    ``ProjectionRunner`` constructs the projection itself, so the benchmark hears of each
    committed event through the class's :attr:`observer`, called after the commit.
    """

    name = "stream_counts"
    observer: ClassVar[Callable[[int, float], None] | None] = None

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.count_with_tracking(
            domain_event.originator_id, domain_event.originator_version, tracking
        )
        observer = type(self).observer
        if observer is not None:
            observer(tracking.notification_id, time.time())


def eventkit_env(url: str, schema: str) -> dict[str, str]:
    """The environment of an eventkit application in ``schema``."""
    return {
        "PERSISTENCE_MODULE": "eventkit.infrastructure.factory",
        "DATABASE_URL": url,
        "EVENTKIT_SCHEMA": schema,
        "EVENTKIT_POOL_MAX_SIZE": str(WRITER_POOL_SIZE),
        # The default, whatever the shell says: followers poll, writers send no NOTIFY.
        "EVENTKIT_NOTIFY": "no",
    }


def eventsourcing_env(url: str, schema: str) -> dict[str, str]:
    """The environment of an eventsourcing application (and view) in ``schema``."""
    return systems.eventsourcing_env(url, schema, pool_size=WRITER_POOL_SIZE)


def create_schema(url: str, system: str, schema: str) -> dict[str, str]:
    """Create ``schema`` with ``system``'s event table; return the writers' environment.

    The tables are created here, once, so writer processes only connect.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        if system == EVENTKIT:
            migrate(conn, schema)
            return eventkit_env(url, schema)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    env = eventsourcing_env(url, schema)
    PlainLog(env=env).close()
    # Writers must not race to create the same tables and types.
    return {**env, "CREATE_TABLE": "no"}


def event_table(system: str, schema: str) -> sql.Identifier:
    """The table that holds ``system``'s events in ``schema``."""
    name = "stored_events" if system == EVENTKIT else f"{PlainLog.name.lower()}_events"
    return sql.Identifier(schema, name)


def settle(url: str, system: str, schema: str) -> None:
    """``VACUUM (ANALYZE)`` the event table, as autovacuum would have done for an old log:
    statistics for the planner, and hint bits set before any projection reads."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(event_table(system, schema)))


def describe_server(url: str) -> str:
    """The server's version and durability settings, and the CPUs it shares with the run."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'), "
            "current_setting('fsync')"
        ).fetchone()
    assert row is not None
    return (
        f"PostgreSQL {row[0]} at {redact(url)} (synchronous_commit={row[1]}, fsync={row[2]}); "
        f"{os.cpu_count()} CPUs, shared by the writers, the projection and the server "
        f"(load average {os.getloadavg()[0]:.1f} as the run starts)"
    )

"""The query side: typed reads of a view, and waiting until a view has caught up.

Read-model consumers use query classes (one per read model), never SQL against the views.
A command returns the notification id of its last event; pass it as ``wait_for`` to a
query, and the query first waits until the projection has processed that event, so a
reader sees its own writes, from any process.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, LiteralString

import psycopg
import psycopg_pool
from psycopg import sql

from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.projection import Projection, table_identifiers


class ReadModelTimeoutError(EventkitError, TimeoutError):
    """A view did not reach the awaited notification in time."""


class ReadModelNotReadyError(EventkitError):
    """A view's tables do not exist yet: no worker of its projection has started."""


class Queries:
    """Base of a read model's query class: the pool, the view's tables, and waiting."""

    projection: ClassVar[type[Projection]]

    def __init__(self, pool: psycopg_pool.ConnectionPool, schema: str) -> None:
        self.pool = pool
        self.schema = schema
        self.tables = table_identifiers(schema, self.projection)

    def sql(self, query: LiteralString) -> sql.Composed:
        """``query`` with ``{table}`` placeholders filled with the view's live tables."""
        return sql.SQL(query).format(**self.tables)

    def position(self) -> Position:
        """The position the projection has processed up to: with several partitions, the
        lowest of theirs."""
        with self.pool.connection() as conn:
            return Tracking(self.schema).lowest(
                conn, self.projection.name, self.projection.partitions
            )

    def wait_for(self, notification_id: int, timeout: float = 5.0) -> None:
        """Block until the projection has processed notification ``notification_id``.

        Raises :class:`ReadModelTimeoutError` after ``timeout`` seconds, naming the
        projection, the awaited notification and where the projection is.
        """
        deadline = time.monotonic() + timeout
        target = self._position_of(notification_id)
        delay = 0.002
        while True:
            current = self.position()
            if target is not None and current >= target:
                return
            if time.monotonic() >= deadline:
                where = "not in the log" if target is None else f"at position {target}"
                raise ReadModelTimeoutError(
                    f"projection {self.projection.name!r} did not process notification "
                    f"{notification_id} ({where}) within {timeout} s; it is at position "
                    f"{current}. Is `eventkit workers` running? See `eventkit status`."
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            if target is None:
                target = self._position_of(notification_id)

    def _position_of(self, notification_id: int) -> Position | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                sql.SQL(
                    "SELECT transaction_id::text::bigint FROM {} WHERE notification_id = %s"
                ).format(sql.Identifier(self.schema, "stored_events")),
                (notification_id,),
            ).fetchone()
        return None if row is None else Position(row[0], notification_id)

    def fetch(
        self,
        query: LiteralString,
        params: Any = (),
        *,
        wait_for: int | None = None,
        timeout: float = 5.0,
    ) -> list[tuple[Any, ...]]:
        """Run a query against the view (after waiting for ``wait_for``, if given)."""
        if wait_for is not None:
            self.wait_for(wait_for, timeout)
        try:
            with self.pool.connection() as conn:
                return conn.execute(self.sql(query), params).fetchall()
        except psycopg.errors.UndefinedTable as e:
            raise ReadModelNotReadyError(
                f"the view of projection {self.projection.name!r} does not exist yet in "
                f"schema {self.schema!r}: start its worker (`eventkit workers "
                f"{self.projection.name}`)"
            ) from e

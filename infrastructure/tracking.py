"""Tracking: each consumer's recorded position (per partition), written in one transaction
with what it processed (a projection's view writes, a reaction's messages)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from eventkit.infrastructure.errors import PersistenceError
from eventkit.infrastructure.log import Position


class TrackingConflictError(PersistenceError):
    """The recorded position moved under a worker: another worker (or an operator) moved it.

    Raised by :meth:`Tracking.advance` when the row no longer holds the position the worker
    read. The worker's transaction must roll back; the worker re-reads its position.
    """


class Tracking:
    """Reads and advances consumers' positions in ``{schema}.tracking``."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        table = sql.Identifier(schema, "tracking")
        self._select = sql.SQL(
            "SELECT transaction_id, notification_id FROM {} WHERE consumer = %s AND partition = %s"
        ).format(table)
        self._update = sql.SQL(
            "UPDATE {} SET transaction_id = %s, notification_id = %s,"
            " updated_at = clock_timestamp()"
            " WHERE consumer = %s AND partition = %s"
            " AND transaction_id = %s AND notification_id = %s RETURNING 1"
        ).format(table)
        self._insert = sql.SQL(
            "INSERT INTO {} (consumer, partition, transaction_id, notification_id)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1"
        ).format(table)
        self._set = sql.SQL(
            "INSERT INTO {} (consumer, partition, transaction_id, notification_id)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (consumer, partition) DO UPDATE SET"
            " transaction_id = excluded.transaction_id,"
            " notification_id = excluded.notification_id, updated_at = clock_timestamp()"
        ).format(table)
        self._delete = sql.SQL("DELETE FROM {} WHERE consumer = %s AND partition >= %s").format(
            table
        )

    def position(
        self, conn: psycopg.Connection[Any], consumer: str, partition: int = 0
    ) -> Position:
        """The consumer's recorded position (the log's origin if it has none)."""
        row = conn.execute(self._select, (consumer, partition)).fetchone()
        return Position.ORIGIN if row is None else Position(row[0], row[1])

    def advance(
        self,
        conn: psycopg.Connection[Any],
        consumer: str,
        expected: Position,
        new: Position,
        partition: int = 0,
    ) -> None:
        """Move the position from ``expected`` to ``new``, inside the caller's transaction.

        Raises :class:`TrackingConflictError` when the row does not hold ``expected``.
        """
        if new <= expected:
            raise PersistenceError(
                f"consumer {consumer!r}: refusing to move its position back from "
                f"{expected} to {new}"
            )
        params = (new.transaction_id, new.notification_id, consumer, partition)
        # RETURNING and fetchone(), not rowcount: fetching waits for the result, also in
        # psycopg's pipeline mode, where rowcount is not known yet.
        expected_values = (expected.transaction_id, expected.notification_id)
        if conn.execute(self._update, (*params, *expected_values)).fetchone() is not None:
            return
        if expected == Position.ORIGIN:
            inserted = conn.execute(
                self._insert, (consumer, partition, new.transaction_id, new.notification_id)
            ).fetchone()
            if inserted is not None:
                return
        actual = self.position(conn, consumer, partition)
        raise TrackingConflictError(
            f"consumer {consumer!r} partition {partition}: expected to advance from "
            f"{expected} but its recorded position is {actual}; another worker or a rebuild "
            "moved it"
        )

    def initialise(
        self,
        conn: psycopg.Connection[Any],
        consumer: str,
        partitions: int,
        start: Callable[[], Position],
    ) -> Position | None:
        """Record ``start()`` for every partition of a consumer that has no recorded
        position yet (its first run), in the caller's transaction, and return it; None when it
        had one.

        Serialised per consumer (a transaction-level advisory lock), so partitions that
        start at once all start from the one position the first of them computed."""
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"eventkit:{self.schema}:start:{consumer}",),
        )
        exists = conn.execute(
            sql.SQL("SELECT 1 FROM {} WHERE consumer = %s LIMIT 1").format(
                sql.Identifier(self.schema, "tracking")
            ),
            (consumer,),
        ).fetchone()
        if exists is not None:
            return None
        position = start()
        for partition in range(partitions):
            conn.execute(
                self._insert,
                (consumer, partition, position.transaction_id, position.notification_id),
            )
        return position

    def set(
        self, conn: psycopg.Connection[Any], consumer: str, position: Position, partition: int = 0
    ) -> None:
        """Record ``position`` unconditionally (rebuild swaps and resets)."""
        conn.execute(
            self._set, (consumer, partition, position.transaction_id, position.notification_id)
        )

    def forget(
        self, conn: psycopg.Connection[Any], consumer: str, *, from_partition: int = 0
    ) -> None:
        """Delete the recorded positions of ``consumer`` (of its partitions from
        ``from_partition`` on)."""
        conn.execute(self._delete, (consumer, from_partition))

    def lowest(
        self, conn: psycopg.Connection[Any], consumer: str, default_partitions: int = 1
    ) -> Position:
        """The lowest position of ``consumer``'s partitions (recorded number, else
        ``default_partitions``); the origin while any partition has none. Everything up to
        it has been processed: each partition reads past other partitions' events."""
        row = conn.execute(
            sql.SQL(
                "SELECT t.transaction_id, t.notification_id FROM generate_series(0,"
                " coalesce((SELECT partitions FROM {p} WHERE consumer = %s), %s) - 1) k"
                " LEFT JOIN {t} t ON t.consumer = %s AND t.partition = k"
                " ORDER BY t.transaction_id NULLS FIRST, t.notification_id LIMIT 1"
            ).format(
                p=sql.Identifier(self.schema, "partitioning"),
                t=sql.Identifier(self.schema, "tracking"),
            ),
            (consumer, default_partitions, consumer),
        ).fetchone()
        return Position.ORIGIN if row is None or row[0] is None else Position(row[0], row[1])

    def positions(self, conn: psycopg.Connection[Any], consumer: str) -> dict[int, Position]:
        """Every partition's recorded position."""
        rows = conn.execute(
            sql.SQL(
                "SELECT partition, transaction_id, notification_id FROM {} WHERE consumer = %s"
            ).format(sql.Identifier(self.schema, "tracking")),
            (consumer,),
        ).fetchall()
        return {r[0]: Position(r[1], r[2]) for r in rows}

"""Tracking: each consumer's recorded position (per partition), written in one transaction
with what it processed (a projection's view writes, a reaction's messages)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from eventkit.infrastructure.audit import HASH_SQL
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
        # The statements of every batch are rendered once, as bytes: a composed statement
        # is rendered again on each execution (identifiers quoted, parts joined).
        table = sql.Identifier(schema, "tracking")
        self._select = (
            sql.SQL(
                "SELECT transaction_id, notification_id FROM {}"
                " WHERE consumer = %s AND partition = %s"
            )
            .format(table)
            .as_bytes(None)
        )
        # The fold of the batch's applied notification ids (the completeness audit,
        # infrastructure/audit.py) rides in the same statement as the position: their
        # count and the sum of their hashes, computed by the server from one array.
        fold = (
            "(SELECT count(*) AS n, coalesce(sum(" + HASH_SQL.format(id="i") + "), 0) AS s"
            " FROM unnest(%s::bigint[]) i) f"
        )
        self._update = (
            sql.SQL(
                "UPDATE {} t SET transaction_id = %s, notification_id = %s,"
                " updated_at = clock_timestamp(), applied_count = t.applied_count + f.n,"
                " applied_checksum = t.applied_checksum + f.s FROM "
                + fold
                + " WHERE t.consumer = %s"
                " AND t.partition = %s AND t.transaction_id = %s AND t.notification_id = %s"
                " RETURNING 1"
            )
            .format(table)
            .as_bytes(None)
        )
        self._fold = (
            sql.SQL(
                "UPDATE {} t SET applied_count = t.applied_count + f.n,"
                " applied_checksum = t.applied_checksum + f.s FROM "
                + fold
                + " WHERE t.consumer = %s"
                " AND t.partition = %s RETURNING 1"
            )
            .format(table)
            .as_bytes(None)
        )
        self._insert = (
            sql.SQL(
                "INSERT INTO {} (consumer, partition, transaction_id, notification_id,"
                " audited_from_transaction_id, audited_from_notification_id, applied_count,"
                " applied_checksum)"
                " SELECT %s, %s, %s, %s, %s, %s, f.n, f.s FROM " + fold + " ON CONFLICT DO NOTHING"
                " RETURNING 1"
            )
            .format(table)
            .as_bytes(None)
        )
        # Set unconditionally (a reset, a swap, a split): the audit's fold starts there.
        self._set = sql.SQL(
            "INSERT INTO {} (consumer, partition, transaction_id, notification_id,"
            " audited_from_transaction_id, audited_from_notification_id)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (consumer, partition) DO UPDATE SET"
            " transaction_id = excluded.transaction_id,"
            " notification_id = excluded.notification_id, updated_at = clock_timestamp(),"
            " audited_from_transaction_id = excluded.transaction_id,"
            " audited_from_notification_id = excluded.notification_id,"
            " applied_count = 0, applied_checksum = 0"
        ).format(table)
        self._restart = sql.SQL(
            "UPDATE {} SET audited_from_transaction_id = transaction_id,"
            " audited_from_notification_id = notification_id, applied_count = 0,"
            " applied_checksum = 0 WHERE consumer = %s AND partition = %s"
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
        *,
        applied: Sequence[int] = (),
    ) -> None:
        """Move the position from ``expected`` to ``new``, inside the caller's transaction,
        and fold ``applied`` (the notification ids the transaction applied) into the row.

        Raises :class:`TrackingConflictError` when the row does not hold ``expected``.
        """
        if new <= expected:
            raise PersistenceError(
                f"consumer {consumer!r}: refusing to move its position back from "
                f"{expected} to {new}"
            )
        ids = _array(applied)
        params = (new.transaction_id, new.notification_id, ids, consumer, partition)
        # RETURNING and fetchone(), not rowcount: fetching waits for the result, also in
        # psycopg's pipeline mode, where rowcount is not known yet.
        expected_values = (expected.transaction_id, expected.notification_id)
        if conn.execute(self._update, (*params, *expected_values)).fetchone() is not None:
            return
        if expected == Position.ORIGIN:
            origin = Position.ORIGIN
            inserted = conn.execute(
                self._insert,
                (
                    consumer,
                    partition,
                    new.transaction_id,
                    new.notification_id,
                    origin.transaction_id,
                    origin.notification_id,
                    ids,
                ),
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
            self.set(conn, consumer, position, partition)
        return position

    def set(
        self, conn: psycopg.Connection[Any], consumer: str, position: Position, partition: int = 0
    ) -> None:
        """Record ``position`` unconditionally (rebuild swaps and resets); the audit's fold
        starts again from it."""
        tx, nid = position.transaction_id, position.notification_id
        conn.execute(self._set, (consumer, partition, tx, nid, tx, nid))

    def fold(
        self, conn: psycopg.Connection[Any], consumer: str, partition: int, applied: Sequence[int]
    ) -> None:
        """Fold ``applied`` notification ids into the row without moving the position (dead
        letters applied on a retry)."""
        if applied:
            conn.execute(self._fold, (_array(applied), consumer, partition)).fetchone()

    def take_fold(
        self, conn: psycopg.Connection[Any], consumer: str, source: str, partition: int = 0
    ) -> None:
        """Give ``consumer``'s row the fold (and where it starts) of ``source``'s row, which
        applied the same events up to the same position (a rebuild's, at its swap)."""
        conn.execute(
            sql.SQL(
                "UPDATE {t} t SET applied_count = s.applied_count,"
                " applied_checksum = s.applied_checksum,"
                " audited_from_transaction_id = s.audited_from_transaction_id,"
                " audited_from_notification_id = s.audited_from_notification_id"
                " FROM {t} s WHERE t.consumer = %s AND t.partition = %s"
                " AND s.consumer = %s AND s.partition = 0"
                " AND (s.transaction_id, s.notification_id) = (t.transaction_id, t.notification_id)"
            ).format(t=sql.Identifier(self.schema, "tracking")),
            (consumer, partition, source),
        )

    def restart_audit(self, conn: psycopg.Connection[Any], consumer: str, partition: int) -> None:
        """Start the audit's fold again from the recorded position (a partition split changes
        which events each partition's fold covers)."""
        conn.execute(self._restart, (consumer, partition))

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


def _array(ids: Sequence[int]) -> str:
    """``ids`` as a PostgreSQL array literal: psycopg's adaptation of a list of 1,000 ints
    (each element's type looked up) cost about a millisecond of the batch's time."""
    return "{" + ",".join(map(str, ids)) + "}"

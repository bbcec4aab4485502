"""Dead letters: events a consumer could not handle, parked per stream, in order.

For a projection, the first event of a stream that fails (after its retries) or cannot be
decoded is parked with its error and traceback; every later event of that stream is parked
behind it, so the stream's order holds while every other stream goes on. An operator
retries a stream (it is reprocessed in order by the worker that owns the projection, then
released) or discards dead letters. A reaction's dead letter names its message instead
(``message_id``); retrying it queues the message again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from eventkit.infrastructure.log import LoggedNotification
from eventkit.infrastructure.partitions import Partition

OPEN = ("parked", "retry_requested")


@dataclass(frozen=True)
class DeadLetter:
    """One parked event of one consumer (a projection's event, or a reaction's message)."""

    dead_letter_id: int
    consumer: str
    originator_id: UUID
    originator_version: int
    notification_id: int
    transaction_id: int
    topic: str
    reason: str
    status: str
    attempts: int
    error_class: str | None
    error: str | None
    traceback: str | None
    created_at: datetime
    updated_at: datetime
    #: The reaction message's id, for dead letters of reactions.
    message_id: UUID | None = None

    def summary(self) -> str:
        text = (
            f"#{self.dead_letter_id} {self.consumer} stream {self.originator_id} "
            f"v{self.originator_version} (notification {self.notification_id}, {self.topic}) "
            f"{self.status}/{self.reason} after {self.attempts} attempt(s)"
        )
        if self.message_id is not None:
            text += f" reaction message {self.message_id}"
        if self.reason == "behind":
            return text + ": waits behind an earlier dead letter of its stream"
        return text + f": {self.error_class}: {self.error}"


@dataclass(frozen=True)
class Selector:
    """Which dead letters an operator means: one id, one stream, or one consumer."""

    dead_letter_id: int | None = None
    stream: UUID | None = None
    consumer: str | None = None

    def where(self) -> tuple[sql.Composable, list[Any]]:
        parts: list[sql.Composable] = []
        params: list[Any] = []
        if self.dead_letter_id is not None:
            parts.append(sql.SQL("dead_letter_id = %s"))
            params.append(self.dead_letter_id)
        if self.stream is not None:
            parts.append(sql.SQL("originator_id = %s"))
            params.append(self.stream)
        if self.consumer is not None:
            parts.append(sql.SQL("consumer = %s"))
            params.append(self.consumer)
        if not parts:
            raise ValueError("name a dead letter id, a stream or a consumer")
        return sql.SQL(" AND ").join(parts), params


class DeadLetters:
    """The ``{schema}.dead_letters`` table."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._table = sql.Identifier(schema, "dead_letters")

    def parked_streams(self, conn: psycopg.Connection[Any], consumer: str) -> set[UUID]:
        """Streams of ``consumer`` with an open dead letter: their events must wait."""
        rows = conn.execute(
            sql.SQL(
                "SELECT DISTINCT originator_id FROM {} WHERE consumer = %s "
                "AND status IN ('parked', 'retry_requested')"
            ).format(self._table),
            (consumer,),
        ).fetchall()
        return {r[0] for r in rows}

    def park(
        self,
        conn: psycopg.Connection[Any],
        consumer: str,
        notification: LoggedNotification,
        *,
        reason: str,
        attempts: int,
        error: BaseException | None = None,
        traceback: str | None = None,
        message_id: UUID | None = None,
    ) -> int:
        """Park one event (or park it again after a failed retry); return its id."""
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {} (consumer, originator_id, originator_version, notification_id,"
                " transaction_id, topic, reason, status, attempts, error_class, error, traceback,"
                " message_id) VALUES (%s, %s, %s, %s, %s, %s, %s, 'parked', %s, %s, %s, %s, %s)"
                " ON CONFLICT (consumer, originator_id, originator_version) DO UPDATE SET"
                " status = 'parked', reason = excluded.reason,"
                " attempts = {}.attempts + excluded.attempts,"
                " error_class = excluded.error_class, error = excluded.error,"
                " traceback = excluded.traceback, updated_at = clock_timestamp()"
                " RETURNING dead_letter_id"
            ).format(self._table, sql.Identifier("dead_letters")),
            (
                consumer,
                notification.originator_id,
                notification.originator_version,
                notification.id,
                notification.transaction_id,
                notification.topic,
                reason,
                attempts,
                None if error is None else type(error).__qualname__,
                None if error is None else str(error),
                traceback,
                message_id,
            ),
        ).fetchone()
        assert row is not None
        dead_letter_id: int = row[0]
        return dead_letter_id

    def select(
        self,
        conn: psycopg.Connection[Any],
        *,
        consumer: str | None = None,
        statuses: Sequence[str] = OPEN,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Dead letters, oldest stream position first."""
        query = sql.SQL("SELECT * FROM {} WHERE status = ANY(%s)").format(self._table)
        params: list[Any] = [list(statuses)]
        if consumer is not None:
            query += sql.SQL(" AND consumer = %s")
            params.append(consumer)
        query += sql.SQL(" ORDER BY consumer, originator_id, originator_version LIMIT %s")
        params.append(limit)
        with conn.cursor(row_factory=class_row(DeadLetter)) as cur:
            return cur.execute(query, params).fetchall()

    def get(self, conn: psycopg.Connection[Any], dead_letter_id: int) -> DeadLetter | None:
        with conn.cursor(row_factory=class_row(DeadLetter)) as cur:
            return cur.execute(
                sql.SQL("SELECT * FROM {} WHERE dead_letter_id = %s").format(self._table),
                (dead_letter_id,),
            ).fetchone()

    def request_retry(self, conn: psycopg.Connection[Any], selector: Selector) -> int:
        """Ask for the whole streams of the selected dead letters of projections to be
        reprocessed in order (reactions' letters are not touched: see :meth:`parked_messages`).

        Returns how many dead letters are now waiting for their worker.
        """
        where, params = selector.where()
        cur = conn.execute(
            sql.SQL(
                "UPDATE {t} SET status = 'retry_requested', updated_at = clock_timestamp() "
                "WHERE status = 'parked' AND message_id IS NULL AND (consumer, originator_id)"
                " IN (SELECT consumer, originator_id FROM {t} WHERE {w} AND status = 'parked')"
            ).format(t=self._table, w=where),
            params,
        )
        return cur.rowcount

    def parked_messages(
        self, conn: psycopg.Connection[Any], selector: Selector, *, lock: bool = False
    ) -> list[DeadLetter]:
        """The selected parked dead letters of reactions (those that name a message)."""
        where, params = selector.where()
        query = sql.SQL(
            "SELECT * FROM {} WHERE {} AND status = 'parked' AND message_id IS NOT NULL "
            "ORDER BY dead_letter_id"
        ).format(self._table, where)
        if lock:
            query += sql.SQL(" FOR UPDATE")
        with conn.cursor(row_factory=class_row(DeadLetter)) as cur:
            return cur.execute(query, params).fetchall()

    def retry_requested(
        self,
        conn: psycopg.Connection[Any],
        consumer: str,
        partition: Partition | None = None,
    ) -> list[DeadLetter]:
        """Open dead letters of the streams of ``consumer`` with a retry requested
        (those of ``partition`` where its key is computed in SQL).

        Every open letter of such a stream, in version order: also those parked behind
        after the retry was requested, so the whole stream is reprocessed and released.
        """
        predicate = None if partition is None else partition.predicate("d")
        params: list[Any] = [consumer, consumer]
        where: sql.Composable = sql.SQL("")
        if predicate is not None:
            where = sql.SQL(" AND ") + predicate[0]
            params += predicate[1]
        with conn.cursor(row_factory=class_row(DeadLetter)) as cur:
            return cur.execute(
                sql.SQL(
                    "SELECT d.* FROM {t} d WHERE consumer = %s AND status IN ('parked', "
                    "'retry_requested') AND originator_id IN (SELECT originator_id FROM {t} "
                    "WHERE consumer = %s AND status = 'retry_requested'){w} "
                    "ORDER BY originator_id, originator_version"
                ).format(t=self._table, w=where),
                params,
            ).fetchall()

    def mark(
        self, conn: psycopg.Connection[Any], dead_letter_ids: Sequence[int], status: str
    ) -> None:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET status = %s, updated_at = clock_timestamp() "
                "WHERE dead_letter_id = ANY(%s)"
            ).format(self._table),
            (status, list(dead_letter_ids)),
        )

    def discard(self, conn: psycopg.Connection[Any], selector: Selector) -> int:
        """Give up on the selected open dead letters; return how many."""
        where, params = selector.where()
        cur = conn.execute(
            sql.SQL(
                "UPDATE {} SET status = 'discarded', updated_at = clock_timestamp() "
                "WHERE {} AND status IN ('parked', 'retry_requested')"
            ).format(self._table, where),
            params,
        )
        return cur.rowcount

    def count_open(self, conn: psycopg.Connection[Any]) -> dict[str, int]:
        """Open dead letters per consumer."""
        rows = conn.execute(
            sql.SQL(
                "SELECT consumer, count(*) FROM {} WHERE status IN ('parked', 'retry_requested')"
                " GROUP BY consumer"
            ).format(self._table)
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def rename_consumer(self, conn: psycopg.Connection[Any], old: str, new: str) -> None:
        """Hand consumer ``old``'s dead letters to ``new`` (a rebuild's swap: the rebuilt
        projection's letters replace the live name's)."""
        conn.execute(sql.SQL("DELETE FROM {} WHERE consumer = %s").format(self._table), (new,))
        conn.execute(
            sql.SQL("UPDATE {} SET consumer = %s WHERE consumer = %s").format(self._table),
            (new, old),
        )

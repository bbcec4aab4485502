"""The snapshot recorder: eventsourcing's ``AggregateRecorder`` for purpose "snapshots", on
PostgreSQL.

Snapshots live in ``{schema}.snapshots``, apart from the notification log: they are not
events, no follower reads them, and they can be deleted at any time (the aggregate is then
rebuilt from its events). A snapshot taken again at a version that already has one
replaces it: two processes that snapshot the same version write the same state, and one
taken after the aggregate class's ``class_version`` changed must replace the stale one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg_pool
from eventsourcing.persistence import AggregateRecorder, StoredEvent
from psycopg import sql

from eventkit.infrastructure.database import retry_transient
from eventkit.infrastructure.errors import EventEncodingError
from eventkit.infrastructure.recorder import stream_query


class PostgresSnapshotRecorder(AggregateRecorder):
    """Records snapshots in ``{schema}.snapshots`` and reads them by stream and version."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, schema: str) -> None:
        self.pool = pool
        self.schema = schema
        self._table = sql.Identifier(schema, "snapshots")
        self._insert = sql.SQL(
            "INSERT INTO {} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::bytea[]) "
            "ON CONFLICT (originator_id, originator_version) DO UPDATE SET "
            "topic = EXCLUDED.topic, state = EXCLUDED.state, recorded_at = clock_timestamp()"
        ).format(self._table)
        self._select = sql.SQL(
            "SELECT originator_id, originator_version, topic, state FROM {} "
            "WHERE originator_id = %s"
        ).format(self._table)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        """Record ``stored_events`` (snapshots) in one statement, replacing any taken at
        the same (stream, version)."""
        if not stored_events:
            return
        ids = [_stream(e) for e in stored_events]
        params = (
            ids,
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )

        def insert() -> None:
            with self.pool.connection() as conn:
                conn.execute(self._insert, params)

        streams = ", ".join(sorted({str(i) for i in ids}))
        retry_transient(
            insert,
            what=f"recording snapshots of stream(s) {streams}",
            within_s=self.pool.timeout,
        )

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """The snapshots of one stream, by version."""
        statement, params = stream_query(
            self._select, originator_id, gt=gt, lte=lte, desc=desc, limit=limit
        )

        def select() -> list[StoredEvent]:
            with self.pool.connection() as conn, conn.cursor(binary=True) as cur:
                cur.execute(statement, params)
                return [StoredEvent(r[0], r[1], r[2], r[3]) for r in cur.fetchall()]

        return retry_transient(
            select,
            what=f"reading the snapshots of stream {originator_id}",
            within_s=self.pool.timeout,
        )


def _stream(event: StoredEvent) -> UUID:
    if isinstance(event.originator_id, UUID):
        return event.originator_id
    try:
        return UUID(str(event.originator_id))
    except ValueError:
        raise EventEncodingError(
            f"snapshot of stream {event.originator_id!r} (version {event.originator_version}): "
            "the stream id is not a UUID; eventkit identifies streams by UUID"
        ) from None

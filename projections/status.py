"""Where each projection is: position, head, lag in events and seconds, state, dead letters.

Head and lag count every committed event, also those that followers cannot read yet
because an older transaction is still open somewhere on the server: a lag that stays
above zero while the workers run points at such a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg_pool
from psycopg import sql

from infrastructure.deadletters import DeadLetters
from infrastructure.log import Position
from projections.projection import Projection

#: A worker whose heartbeat is older than this is reported as stopped.
HEARTBEAT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ProjectionStatus:
    projection: str
    state: str
    worker_id: str | None
    position: str
    head: str | None
    lag_events: int
    lag_seconds: float
    dead_letters: int
    detail: str | None
    heartbeat_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["heartbeat_at"] = None if self.heartbeat_at is None else self.heartbeat_at.isoformat()
        return data


def projection_status(
    pool: psycopg_pool.ConnectionPool, schema: str, projections: Sequence[type[Projection]]
) -> list[ProjectionStatus]:
    """The status of each projection in ``projections`` (and of any rebuild under way)."""
    events = sql.Identifier(schema, "stored_events")
    tracking = sql.Identifier(schema, "tracking")
    workers = sql.Identifier(schema, "projection_workers")
    result = []
    with pool.connection() as conn:
        dead = DeadLetters(schema).count_open(conn)
        head_row = conn.execute(
            sql.SQL(
                "SELECT transaction_id::text::bigint, notification_id FROM {} "
                "ORDER BY transaction_id DESC, notification_id DESC LIMIT 1"
            ).format(events)
        ).fetchone()
        head = None if head_row is None else Position(head_row[0], head_row[1])
        names = []
        for p in projections:
            names.append((p, p.name))
            names.append((p, f"{p.name}#rebuild"))
        for p, name in names:
            row = conn.execute(
                sql.SQL(
                    "SELECT t.transaction_id, t.notification_id, w.state, w.worker_id, "
                    "w.detail, w.heartbeat_at, "
                    "extract(epoch FROM clock_timestamp() - w.heartbeat_at) "
                    "FROM (SELECT %s::text AS projection) n "
                    "LEFT JOIN {} t ON t.projection = n.projection AND t.partition = 0 "
                    "LEFT JOIN {} w ON w.projection = n.projection"
                ).format(tracking, workers),
                (name,),
            ).fetchone()
            assert row is not None
            position = Position.ORIGIN if row[0] is None else Position(row[0], row[1])
            if name.endswith("#rebuild") and row[2] is None and row[0] is None:
                continue  # no rebuild of this projection has run
            state = row[2] or "stopped"
            if row[6] is not None and float(row[6]) > HEARTBEAT_TIMEOUT_S:
                state = "stopped"
            if name.endswith("#rebuild") and state == "stopped":
                continue  # a finished or abandoned rebuild
            lag = conn.execute(
                sql.SQL(
                    "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - "
                    "min(recorded_at)), 0) FROM {} WHERE "
                    "(transaction_id, notification_id) > (%s::text::xid8, %s) AND "
                    "topic = ANY(%s)"
                ).format(events),
                (str(position.transaction_id), position.notification_id, p.topics()),
            ).fetchone()
            assert lag is not None
            result.append(
                ProjectionStatus(
                    projection=name,
                    state=state,
                    worker_id=row[3],
                    position=str(position),
                    head=None if head is None else str(head),
                    lag_events=int(lag[0]),
                    lag_seconds=round(float(lag[1]), 3),
                    dead_letters=dead.get(name, 0),
                    detail=row[4],
                    heartbeat_at=row[5],
                )
            )
    return result

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
from dramatiq.common import dq_name
from psycopg import sql

from infrastructure.broker import queue_name
from infrastructure.deadletters import DeadLetters
from infrastructure.log import Position
from projections.projection import Handlers

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
    pool: psycopg_pool.ConnectionPool, schema: str, projections: Sequence[type[Handlers]]
) -> list[ProjectionStatus]:
    """The status of each projection in ``projections`` (and of any rebuild under way);
    for reactions, the status of their followers."""
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


@dataclass(frozen=True)
class ReactionStatus:
    """A reaction: its follower's position and lag, and its messages.

    ``queued``, ``in_flight`` and ``retrying`` are read from the PostgreSQL broker's queue
    table (with RabbitMQ or Redis, the broker's own tools show them; ``queued`` then counts
    messages still in the outbox); ``executed`` counts the ledger's records.
    """

    reaction: str
    state: str
    worker_id: str | None
    position: str
    head: str | None
    lag_events: int
    lag_seconds: float
    queued: int
    in_flight: int | None
    retrying: int | None
    executed: int
    dead_letters: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def reaction_status(
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    reactions: Sequence[type[Handlers]],
    *,
    postgres_broker: bool = True,
) -> list[ReactionStatus]:
    """The status of each reaction in ``reactions``."""
    followers = {s.projection: s for s in projection_status(pool, schema, reactions)}
    queues: dict[str, str] = {}
    for r in reactions:
        queues[queue_name(schema, r.name)] = r.name
        queues[dq_name(queue_name(schema, r.name))] = r.name
    queue: dict[str, tuple[int, int, int]] = {}
    with pool.connection() as conn:
        if postgres_broker:
            found = conn.execute(
                sql.SQL(
                    "SELECT queue_name, count(*) FILTER (WHERE state = 'queued'), "
                    "count(*) FILTER (WHERE state = 'consumed'), "
                    "count(*) FILTER (WHERE coalesce((message->'options'->>'retries')::int, 0)"
                    " > 0) FROM {} WHERE queue_name = ANY(%s) GROUP BY 1"
                ).format(sql.Identifier(schema, "dramatiq_queue")),
                (list(queues),),
            ).fetchall()
        else:
            found = conn.execute(
                sql.SQL(
                    "SELECT queue_name, count(*), 0, 0 FROM {} WHERE queue_name = ANY(%s) "
                    "GROUP BY 1"
                ).format(sql.Identifier(schema, "reaction_outbox")),
                (list(queues),),
            ).fetchall()
        for q, queued, in_flight, retrying in found:
            before = queue.get(queues[q], (0, 0, 0))
            queue[queues[q]] = (
                before[0] + int(queued),
                before[1] + int(in_flight),
                before[2] + int(retrying),
            )
        done = {
            r[0]: int(r[1])
            for r in conn.execute(
                sql.SQL("SELECT reaction, count(*) FROM {} GROUP BY reaction").format(
                    sql.Identifier(schema, "reaction_ledger")
                )
            ).fetchall()
        }
    result = []
    for r in reactions:
        f = followers[r.name]
        queued, in_flight, retrying = queue.get(r.name, (0, 0, 0))
        result.append(
            ReactionStatus(
                reaction=r.name,
                state=f.state,
                worker_id=f.worker_id,
                position=f.position,
                head=f.head,
                lag_events=f.lag_events,
                lag_seconds=f.lag_seconds,
                queued=queued,
                in_flight=in_flight if postgres_broker else None,
                retrying=retrying if postgres_broker else None,
                executed=done.get(r.name, 0),
                dead_letters=f.dead_letters,
            )
        )
    return result

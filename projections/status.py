"""Where each consumer is: position, head, lag in events and seconds, state, dead letters.

Head and lag count every committed event, also those that followers cannot read yet
because an older transaction is still open somewhere on the server: a lag that stays
above zero while the workers run points at such a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
import psycopg_pool
from dramatiq.common import dq_name
from psycopg import sql

from eventkit.infrastructure.broker import queue_name
from eventkit.infrastructure.deadletters import DeadLetters
from eventkit.infrastructure.leases import Leases
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.partitions import Partition, recorded_partitions
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.projection import Consumer, Projection

#: A worker whose heartbeat is older than this is reported as stopped.
HEARTBEAT_TIMEOUT_S = 10.0
#: An open transaction that holds every follower back is reported once it is this old
#: (a worker's own batch transaction lasts milliseconds).
HOLD_WARNING_S = 5.0


@dataclass(frozen=True)
class PartitionRow:
    """One partition of a consumer: its owner, lease, position and lag."""

    partition: int
    state: str
    owner: str | None
    generation: int | None
    lease_expires_in_s: float | None
    position: str
    lag_events: int
    lag_seconds: float
    detail: str | None


@dataclass(frozen=True)
class ConsumerStatus:
    """Where a consumer (a projection, a reaction's follower, or a projection's rebuild,
    ``NAME#rebuild``) is, over all its partitions."""

    consumer: str
    kind: str
    state: str
    worker_id: str | None
    position: str
    head: str | None
    lag_events: int
    lag_seconds: float
    dead_letters: int
    detail: str | None
    heartbeat_at: datetime | None
    partitions: tuple[PartitionRow, ...] = ()

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["heartbeat_at"] = None if self.heartbeat_at is None else self.heartbeat_at.isoformat()
        data["partitions"] = [asdict(p) for p in self.partitions]
        return data


@dataclass(frozen=True)
class Partitions:
    """A consumer's partitions (``eventkit partitions NAME``)."""

    name: str
    partitions: int
    key: str
    rows: tuple[PartitionRow, ...]

    def table(self) -> str:
        header = (
            "partition",
            "state",
            "owner",
            "generation",
            "lease s",
            "position",
            "lag",
            "lag s",
        )
        lines = [header] + [
            (
                str(r.partition),
                r.state,
                r.owner or "-",
                "-" if r.generation is None else str(r.generation),
                "-" if r.lease_expires_in_s is None else f"{r.lease_expires_in_s:.1f}",
                r.position,
                str(r.lag_events),
                f"{r.lag_seconds:.1f}",
            )
            for r in self.rows
        ]
        return f"{self.name}: {self.partitions} partition(s) by {self.key}\n" + _columns(lines)


@dataclass(frozen=True)
class Member:
    """A worker process in the group (``eventkit workers``)."""

    worker_id: str
    host: str
    pid: int
    consumers: tuple[str, ...]
    connections: int
    leases: int
    heartbeat_age_s: float
    alive: bool


def members(conn: psycopg.Connection[Any], schema: str) -> list[Member]:
    """The worker processes in the group, with the leases each holds and the most
    connections each may open."""
    rows = conn.execute(
        sql.SQL(
            "SELECT m.worker_id, m.host, m.pid, m.consumers, m.connections,"
            " (SELECT count(*) FROM {l} l WHERE l.owner = m.worker_id"
            "  AND l.expires_at > clock_timestamp()),"
            " extract(epoch FROM clock_timestamp() - m.heartbeat_at)::float8,"
            " m.expires_at > clock_timestamp()"
            " FROM {m} m ORDER BY m.worker_id"
        ).format(l=sql.Identifier(schema, "leases"), m=sql.Identifier(schema, "worker_members"))
    ).fetchall()
    return [
        Member(r[0], r[1], r[2], tuple(r[3]), r[4], int(r[5]), round(r[6], 1), r[7]) for r in rows
    ]


def render_members(rows: Sequence[Member]) -> str:
    header = ("worker", "alive", "consumers", "leases", "max connections", "heartbeat s ago")
    lines = [header] + [
        (
            m.worker_id,
            "yes" if m.alive else "no",
            ", ".join(m.consumers),
            str(m.leases),
            str(m.connections),
            f"{m.heartbeat_age_s:.1f}",
        )
        for m in rows
    ]
    return _columns(lines)


def _columns(lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def partition_status(
    conn: psycopg.Connection[Any], schema: str, consumer: type[Consumer], name: str | None = None
) -> Partitions:
    """Each partition of ``consumer`` (or of its rebuild, ``name``)."""
    name = name or consumer.name
    count = recorded_partitions(conn, schema).get(
        name, consumer.partitions if name == consumer.name else 1
    )
    positions = Tracking(schema).positions(conn, name)
    leases = {r.partition: r for r in Leases(schema).rows(conn, [name])}
    states = {
        r[0]: r[1:]
        for r in conn.execute(
            sql.SQL(
                "SELECT partition, state, worker_id, detail,"
                " extract(epoch FROM clock_timestamp() - heartbeat_at)::float8"
                " FROM {} WHERE consumer = %s"
            ).format(sql.Identifier(schema, "consumer_workers")),
            (name,),
        ).fetchall()
    }
    events = sql.Identifier(schema, "stored_events")
    rows = []
    for k in range(count):
        position = positions.get(k, Position.ORIGIN)
        predicate = Partition(consumer.partition_key, count, k).predicate("e")
        where, params = (sql.SQL(""), []) if predicate is None else predicate
        if predicate is not None:
            where = sql.SQL(" AND ") + where
        lag = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - "
                "min(recorded_at)), 0) FROM {} e WHERE "
                "(transaction_id, notification_id) > (%s::text::xid8, %s) AND "
                "topic = ANY(%s){}"
            ).format(events, where),
            [str(position.transaction_id), position.notification_id, consumer.topics(), *params],
        ).fetchone()
        assert lag is not None
        state_row = states.get(k)
        state = "stopped"
        if state_row is not None and state_row[3] is not None:
            state = state_row[0] if float(state_row[3]) <= HEARTBEAT_TIMEOUT_S else "stopped"
        lease = leases.get(k)
        held = lease is not None and lease.owner is not None and lease.expires_in_s > 0
        rows.append(
            PartitionRow(
                partition=k,
                state=state,
                owner=lease.owner if held and lease is not None else None,
                generation=lease.generation if lease is not None else None,
                lease_expires_in_s=round(lease.expires_in_s, 1) if held and lease else None,
                position=str(position),
                lag_events=int(lag[0]),
                lag_seconds=round(float(lag[1]), 3),
                detail=state_row[2] if state_row is not None else None,
            )
        )
    key = consumer.partition_key
    return Partitions(
        name,
        count,
        key if isinstance(key, str) else getattr(key, "__name__", "function"),
        tuple(rows),
    )


def consumer_status(
    pool: psycopg_pool.ConnectionPool, schema: str, consumers: Sequence[type[Consumer]]
) -> list[ConsumerStatus]:
    """The status of each of ``consumers``: of a projection (and of its rebuild, when one
    is under way), of a reaction's follower. Lag sums the partitions' lags; the position
    is the lowest of the partitions' positions."""
    workers = sql.Identifier(schema, "consumer_workers")
    result = []
    head = PostgresEventRecorder(pool, schema).last_recorded()
    with pool.connection() as conn:
        dead = DeadLetters(schema).count_open(conn)
        for p in consumers:
            kind = "projection" if issubclass(p, Projection) else "reaction"
            for name in (p.name, f"{p.name}#rebuild"):
                parts = partition_status(conn, schema, p, name)
                latest = conn.execute(
                    sql.SQL(
                        "SELECT heartbeat_at FROM {} WHERE consumer = %s "
                        "ORDER BY heartbeat_at DESC LIMIT 1"
                    ).format(workers),
                    (name,),
                ).fetchone()
                states = {r.state for r in parts.rows}
                state = next(
                    (s for s in ("failing", "rebuilding", "running") if s in states), "stopped"
                )
                if name.endswith("#rebuild") and state == "stopped":
                    continue  # no rebuild under way
                owners = sorted({r.owner for r in parts.rows if r.owner})
                details = [f"p{r.partition}: {r.detail}" for r in parts.rows if r.detail]
                position = min(Position.parse(r.position) for r in parts.rows)
                result.append(
                    ConsumerStatus(
                        consumer=name,
                        kind=kind,
                        state=state,
                        worker_id=", ".join(owners) or None,
                        position=str(position),
                        head=None if head is None else str(head),
                        lag_events=sum(r.lag_events for r in parts.rows),
                        lag_seconds=max(r.lag_seconds for r in parts.rows),
                        dead_letters=dead.get(name, 0),
                        detail=(
                            "; ".join(details)
                            if parts.partitions > 1
                            else (details[0].split(": ", 1)[1] if details else None)
                        ),
                        heartbeat_at=None if latest is None else latest[0],
                        partitions=parts.rows if parts.partitions > 1 else (),
                    )
                )
    return result


@dataclass(frozen=True)
class ReactionStatus:
    """A reaction: its follower's position and lag, and its messages.

    ``queued``, ``in_flight`` and ``retrying`` are read from the PostgreSQL broker's queue
    table (with RabbitMQ or Redis, the broker's own tools show them; ``queued`` then counts
    messages still in the outbox); ``executed`` counts the ledger's records;
    ``oldest_age_s`` is the age of the oldest message not executed yet (queued, claimed or
    waiting for a retry; with RabbitMQ or Redis, in the outbox), 0 when none waits.
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
    oldest_age_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def reaction_status(
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    reactions: Sequence[type[Consumer]],
    *,
    postgres_broker: bool = True,
    followers: Sequence[ConsumerStatus] | None = None,
) -> list[ReactionStatus]:
    """The status of each reaction in ``reactions`` (``followers``: their followers'
    :func:`consumer_status`, when the caller has it already)."""
    found_followers = consumer_status(pool, schema, reactions) if followers is None else followers
    by_name = {s.consumer: s for s in found_followers}
    queues: dict[str, str] = {}
    for r in reactions:
        queues[queue_name(schema, r.name)] = r.name
        queues[dq_name(queue_name(schema, r.name))] = r.name
    queue: dict[str, tuple[int, int, int]] = {}
    oldest: dict[str, float] = {}
    with pool.connection() as conn:
        if postgres_broker:
            found = conn.execute(
                sql.SQL(
                    "SELECT queue_name, count(*) FILTER (WHERE state = 'queued'), "
                    "count(*) FILTER (WHERE state = 'consumed'), "
                    "count(*) FILTER (WHERE coalesce((message->'options'->>'retries')::int, 0)"
                    " > 0), coalesce(extract(epoch FROM clock_timestamp() - min(coalesce("
                    "to_timestamp((message->>'message_timestamp')::bigint / 1000.0), mtime))"
                    " FILTER (WHERE state IN ('queued', 'consumed')))::float8, 0)"
                    " FROM {} WHERE queue_name = ANY(%s) GROUP BY 1"
                ).format(sql.Identifier(schema, "dramatiq_queue")),
                (list(queues),),
            ).fetchall()
        else:
            found = conn.execute(
                sql.SQL(
                    "SELECT queue_name, count(*), 0, 0, extract(epoch FROM clock_timestamp() -"
                    " min(created_at))::float8 FROM {} WHERE queue_name = ANY(%s) GROUP BY 1"
                ).format(sql.Identifier(schema, "reaction_outbox")),
                (list(queues),),
            ).fetchall()
        for q, queued, in_flight, retrying, age in found:
            oldest[queues[q]] = max(oldest.get(queues[q], 0.0), float(age or 0.0))
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
        f = by_name[r.name]
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
                oldest_age_s=round(oldest.get(r.name, 0.0), 3),
            )
        )
    return result


def server_warnings(
    pool: psycopg_pool.ConnectionPool, schema: str, *, hold_s: float | None = None
) -> list[str]:
    """What on the server slows every worker down, said so that an operator can act on it:
    a transaction that can still append to the log, open for ``hold_s`` (default
    :data:`HOLD_WARNING_S`) or longer, which followers cannot read past (a backend's, or
    a prepared one), and autovacuum turned off."""
    hold_s = HOLD_WARNING_S if hold_s is None else hold_s
    warnings = []
    holder = PostgresEventRecorder(pool, schema).oldest_open_transaction()
    if holder is not None and holder.open_for_s is not None and holder.open_for_s >= hold_s:
        warnings.append(
            f"followers cannot read past {holder.describe()}; events committed since it "
            f"began reach no projection or reaction until it ends: {holder.remedy()}"
        )
    with pool.connection() as conn:
        warning = autovacuum_warning(conn)
    if warning is not None:
        warnings.append(warning)
    return warnings


def autovacuum_warning(conn: psycopg.Connection[Any]) -> str | None:
    """A warning when the server runs without autovacuum, else None."""
    row = conn.execute("SELECT current_setting('autovacuum')").fetchone()
    if row is None or row[0] != "off":
        return None
    return (
        "autovacuum is off on this server: the PostgreSQL broker's queue table and the "
        "tracking, lease and worker rows are updated in place and bloat without it, and "
        "workers slow down as they do (docs/reactions.md); turn it on, or VACUUM them often"
    )

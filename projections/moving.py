"""Moving a projection or reaction, every partition at once, the way Kafka's
``kafka-consumer-groups --reset-offsets`` moves a group: to the origin, the head, a
position or a time.

:func:`plan` says, per partition, where the consumer is, where it would go and how many of
its events lie between (events it would process again, or skip); :func:`execute` moves it
in one transaction under its lease rows' lock. A running worker adopts a moved position at
its next heartbeat (its in-flight batch fails its compare-and-set and is read again).

What a move means for each kind:

- a **reaction** may move anywhere: moving back sends the messages of those events again,
  and the idempotency ledger lets only the never-executed ones run; moving forward skips
  events (their messages are never sent);
- a **projection** moved to the origin has its view emptied in the same transaction, and
  its dead letters forgotten: its workers replay it (stop them first, or rebuild beside
  the live view with ``eventkit rebuild``); moved forward, its view misses the skipped
  events; moving it back anywhere but the origin would apply events to its view twice,
  and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg import sql

from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.leases import Leases
from eventkit.infrastructure.log import Position, StartFrom, describe_start
from eventkit.infrastructure.partitions import Partition, recorded_partitions
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.projection import Consumer, Projection, drop_tables


class MoveError(EventkitError):
    """A move that would corrupt a view, or that cannot run now."""


@dataclass(frozen=True)
class PartitionMove:
    """One partition's move: from ``before`` to ``after``, across ``events`` events of the
    consumer's types in that partition."""

    partition: int
    before: Position
    after: Position
    events: int

    @property
    def direction(self) -> str:
        if self.after < self.before:
            return "back"
        return "forward" if self.after > self.before else "none"


@dataclass(frozen=True)
class MovePlan:
    """A consumer's move, every partition."""

    consumer: str
    kind: str
    target: str
    partitions: list[PartitionMove]

    def describe(self) -> str:
        lines = [f"{self.kind} {self.consumer} to {self.target}:"]
        for m in self.partitions:
            what = {
                "back": f"{m.events:,} event(s) processed again",
                "forward": f"{m.events:,} event(s) skipped",
                "none": "no change",
            }[m.direction]
            lines.append(f"  partition {m.partition}: {m.before} -> {m.after}  ({what})")
        return "\n".join(lines)


def plan(
    conn: psycopg.Connection[Any],
    schema: str,
    recorder: PostgresEventRecorder,
    consumer: type[Consumer],
    start: StartFrom,
) -> MovePlan:
    """Where ``consumer``'s partitions are and where a move to ``start`` takes them."""
    kind = "projection" if issubclass(consumer, Projection) else "reaction"
    target = recorder.start_position(start)
    count = recorded_partitions(conn, schema).get(consumer.name, consumer.partitions)
    positions = Tracking(schema).positions(conn, consumer.name)
    moves = []
    for k in range(count):
        before = positions.get(k, Position.ORIGIN)
        partition = Partition(consumer.partition_key, count, k)
        events = _count(
            conn, schema, topics=consumer.topics(), partition=partition, a=before, b=target
        )
        moves.append(PartitionMove(k, before, target, events))
    return MovePlan(consumer.name, kind, f"{describe_start(start)} ({target})", moves)


def _count(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    topics: list[str],
    partition: Partition,
    a: Position,
    b: Position,
) -> int:
    """The consumer's events in ``partition`` between positions ``a`` and ``b``: after the
    lower, up to and including the higher. A key function cannot be counted per
    partition in SQL: every partition then counts all the consumer's events."""
    low, high = min(a, b), max(a, b)
    if low == high:
        return 0
    condition: sql.Composable = sql.SQL("e.topic = ANY(%s)")
    params: list[Any] = [topics]
    predicate = partition.predicate("e")
    if predicate is not None:
        condition = sql.SQL("{} AND {}").format(condition, predicate[0])
        params += predicate[1]
    row = conn.execute(
        sql.SQL(
            "SELECT count(*) FROM {} e WHERE {} AND (e.transaction_id, e.notification_id)"
            " > (%s::text::xid8, %s) AND (e.transaction_id, e.notification_id)"
            " <= (%s::text::xid8, %s)"
        ).format(sql.Identifier(schema, "stored_events"), condition),
        [
            *params,
            str(low.transaction_id),
            low.notification_id,
            str(high.transaction_id),
            high.notification_id,
        ],
    ).fetchone()
    return int(row[0]) if row else 0


def execute(
    conn: psycopg.Connection[Any], schema: str, consumer: type[Consumer], moves: MovePlan
) -> None:
    """Carry ``moves`` out in one transaction, under the consumer's lease rows' lock."""
    is_projection = moves.kind == "projection"
    to_origin = all(m.after == Position.ORIGIN for m in moves.partitions)
    if is_projection and not to_origin and any(m.direction == "back" for m in moves.partitions):
        raise MoveError(
            f"projection {consumer.name!r}: moving it back to "
            f"{moves.partitions[0].after} would apply events to its view a second time; "
            "move it to the origin (its view is emptied) or rebuild it (eventkit rebuild)"
        )
    tracking = Tracking(schema)
    leases = Leases(schema)
    with conn.transaction():
        leases.lock(conn, consumer.name)
        if is_projection and to_origin:
            held = [
                r
                for r in leases.rows(conn, [consumer.name])
                if r.owner is not None and r.expires_in_s > 0
            ]
            if held:
                owners = ", ".join(sorted({r.owner or "" for r in held}))
                raise MoveError(
                    f"projection {consumer.name!r} is being worked on by {owners} (partitions "
                    f"{', '.join(str(r.partition) for r in held)}); stop its workers first, "
                    "or rebuild it beside the live view (eventkit rebuild)"
                )
            leases.revoke(conn, consumer.name)
            drop_tables(conn, schema, cast(type[Projection], consumer))
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE consumer = %s").format(
                    sql.Identifier(schema, "dead_letters")
                ),
                (consumer.name,),
            )
        for m in moves.partitions:
            tracking.set(conn, consumer.name, m.after, m.partition)

"""The completeness audit: has a consumer applied every committed event of its types up to
its position, exactly once, in every partition?

Every batch a follower commits folds the notification ids it applied into its partition's
tracking row, in the batch's own transaction (:mod:`eventkit.infrastructure.tracking`): a
count, and a checksum that adds up a 64-bit hash of each id. A sum does not depend on the
order of the batches, and an event applied twice adds its hash twice. The audit recomputes
both from the log: the events of the consumer's types in the partition, after the row's
``audited_from`` and up to its position, less those parked as dead letters and not retried.

Equal folds prove (up to a 64-bit hash collision) that the applied multiset of ids is the
expected set. When they differ, the audit names the events: a run of consecutive events
(in log order) that was missed or applied twice is found from the differences in count and
checksum, by prefix sums over the partition's events (one event is a run of one), and so is
one event missed while another was applied twice. Other differences are reported as counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from eventkit.infrastructure.log import LoggedNotification, Position
from eventkit.infrastructure.partitions import Partition, PartitionKey

#: The hash of a notification id the folds add up, made non-negative (the SQL both the
#: follower's fold and the audit use).
HASH_SQL = "(hashint8extended({id}, 0)::numeric + 9223372036854775808)"
#: Dead letters whose events the consumer has not applied (and may never).
_UNAPPLIED = ("parked", "retry_requested", "discarded")


@dataclass(frozen=True)
class Fold:
    """How many events, and the sum of their hashes."""

    count: int
    checksum: int


@dataclass(frozen=True)
class AuditedEvent:
    """An event the audit names."""

    notification_id: int
    position: Position
    stream: UUID
    version: int
    topic: str

    def describe(self) -> str:
        return (
            f"notification {self.notification_id} at {self.position} (stream {self.stream} "
            f"version {self.version}, {self.topic})"
        )


@dataclass(frozen=True)
class PartitionAudit:
    """What the audit found in one partition."""

    consumer: str
    partition: int
    audited_from: Position
    position: Position
    expected: Fold
    recorded: Fold
    missed: list[AuditedEvent] = field(default_factory=list)
    doubled: list[AuditedEvent] = field(default_factory=list)
    #: Set when the difference is not one the audit can name event by event.
    unexplained: str | None = None

    @property
    def complete(self) -> bool:
        return self.expected == self.recorded

    def describe(self) -> str:
        where = f"{self.consumer} partition {self.partition} ({self.audited_from}, {self.position}]"
        if self.complete:
            return f"{where}: complete, {self.expected.count} event(s) each applied once"
        lines = [
            f"{where}: INCOMPLETE: expected {self.expected.count} event(s), recorded "
            f"{self.recorded.count} applied"
        ]
        lines += [f"  missed: {e.describe()}" for e in self.missed]
        lines += [f"  applied twice: {e.describe()}" for e in self.doubled]
        if self.unexplained:
            lines.append(f"  {self.unexplained}")
        return "\n".join(lines)


def audit_partition(
    conn: psycopg.Connection[Any],
    schema: str,
    consumer: str,
    topics: Sequence[str],
    partition: Partition,
) -> PartitionAudit:
    """Audit one partition of ``consumer`` (whose events are those of ``topics``)."""
    tracking = sql.Identifier(schema, "tracking")
    row = conn.execute(
        sql.SQL(
            "SELECT transaction_id, notification_id, applied_count, applied_checksum,"
            " audited_from_transaction_id, audited_from_notification_id"
            " FROM {} WHERE consumer = %s AND partition = %s"
        ).format(tracking),
        (consumer, partition.index),
    ).fetchone()
    if row is None:
        origin = Position.ORIGIN
        return PartitionAudit(consumer, partition.index, origin, origin, Fold(0, 0), Fold(0, 0))
    position, recorded = Position(row[0], row[1]), Fold(int(row[2]), int(row[3]))
    audited_from = Position(row[4], row[5])
    events = _Events(
        schema, consumer, topics, partition, audited_from=audited_from, position=position
    )
    if callable(partition.key) and not partition.whole:
        listed = events.list(conn)
        expected = Fold(len(listed), sum(h for _, h in listed))
    else:
        expected = events.fold(conn)
    result = PartitionAudit(consumer, partition.index, audited_from, position, expected, recorded)
    if result.complete:
        return result
    return _explain(result, events.list(conn), _Describer(conn, events.table))


class _Events:
    """The events a partition's fold should hold: the consumer's types, in the partition,
    after ``audited_from`` and up to ``position``, less unapplied dead letters."""

    def __init__(
        self,
        schema: str,
        consumer: str,
        topics: Sequence[str],
        partition: Partition,
        *,
        audited_from: Position,
        position: Position,
    ) -> None:
        self.schema = schema
        self.partition = partition
        where = sql.SQL(
            "e.topic = ANY(%s)"
            " AND (e.transaction_id, e.notification_id) > (%s::text::xid8, %s)"
            " AND (e.transaction_id, e.notification_id) <= (%s::text::xid8, %s)"
            " AND NOT EXISTS (SELECT 1 FROM {d} d WHERE d.consumer = %s"
            " AND d.notification_id = e.notification_id AND d.status = ANY(%s)"
            # A reaction's executor parks messages the follower did enqueue (and fold).
            " AND d.message_id IS NULL)"
        ).format(d=sql.Identifier(schema, "dead_letters"))
        params: list[Any] = [
            list(topics),
            str(audited_from.transaction_id),
            audited_from.notification_id,
            str(position.transaction_id),
            position.notification_id,
            consumer,
            list(_UNAPPLIED),
        ]
        predicate = partition.predicate("e")
        if predicate is not None:
            where = sql.SQL("{} AND {}").format(where, predicate[0])
            params += predicate[1]
        self.where = where
        self.params = params
        self.table = sql.Identifier(schema, "stored_events")

    def fold(self, conn: psycopg.Connection[Any]) -> Fold:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(sum(" + HASH_SQL.format(id="e.notification_id") + "), 0)"
                " FROM {} e WHERE {}"
            ).format(self.table, self.where),
            self.params,
        ).fetchone()
        assert row is not None
        return Fold(int(row[0]), int(row[1]))

    def list(self, conn: psycopg.Connection[Any]) -> list[tuple[int, int]]:
        """(notification id, hash) of each event, in log order."""
        columns = "e.notification_id, " + HASH_SQL.format(id="e.notification_id")
        if callable(self.partition.key) and not self.partition.whole:
            columns += (
                ", e.originator_id, e.originator_version, e.topic, e.state,"
                " e.transaction_id::text::bigint, e.recorded_at"
            )
        with conn.cursor(binary=True) as cur:
            cur.execute(
                sql.SQL(
                    "SELECT " + columns + " FROM {} e WHERE {}"
                    " ORDER BY e.transaction_id, e.notification_id"
                ).format(self.table, self.where),
                self.params,
            )
            rows = cur.fetchall()
        if callable(self.partition.key) and not self.partition.whole:
            rows = [
                r
                for r in rows
                if self.partition.contains(
                    LoggedNotification(r[2], r[3], r[4], bytes(r[5]), r[0], r[6], r[7])
                )
            ]
        return [(int(r[0]), int(r[1])) for r in rows]


class _Describer:
    """Looks up the events the audit names."""

    def __init__(self, conn: psycopg.Connection[Any], table: sql.Identifier) -> None:
        self.conn = conn
        self.table = table

    def __call__(self, ids: Sequence[int]) -> list[AuditedEvent]:
        if not ids:
            return []
        rows = self.conn.execute(
            sql.SQL(
                "SELECT notification_id, transaction_id::text::bigint, originator_id,"
                " originator_version, topic FROM {} WHERE notification_id = ANY(%s)"
            ).format(self.table),
            (list(ids),),
        ).fetchall()
        found = {r[0]: AuditedEvent(r[0], Position(r[1], r[0]), r[2], r[3], r[4]) for r in rows}
        return [found[i] for i in ids if i in found]


def _explain(
    result: PartitionAudit, listed: list[tuple[int, int]], describe: _Describer
) -> PartitionAudit:
    """Name the events behind the difference between the expected and the recorded fold."""
    extra = result.recorded.count - result.expected.count
    surplus = result.recorded.checksum - result.expected.checksum
    if extra != 0:
        run = _run(listed, abs(extra), abs(surplus))
        if run is not None and (extra > 0) == (surplus > 0):
            named = describe(run)
            if extra < 0:
                return _with(result, missed=named)
            return _with(result, doubled=named)
    else:
        pair = _swap(listed, surplus)
        if pair is not None:
            missed, doubled = pair
            return _with(result, missed=describe([missed]), doubled=describe([doubled]))
    what = "missed" if extra < 0 else "applied more than once" if extra > 0 else "changed"
    return _with(
        result,
        unexplained=(
            f"{abs(extra)} event(s) {what}, not one run of consecutive events: audit a "
            "narrower range by moving a copy, or compare the view with a rebuild"
        ),
    )


def _with(result: PartitionAudit, **changes: Any) -> PartitionAudit:
    return replace(result, **changes)


def _run(listed: list[tuple[int, int]], k: int, total: int) -> list[int] | None:
    """The ids of ``k`` consecutive events whose hashes add up to ``total``."""
    if k == 0 or k > len(listed):
        return None
    window = sum(h for _, h in listed[:k])
    for start in range(len(listed) - k + 1):
        if start:
            window += listed[start + k - 1][1] - listed[start - 1][1]
        if window == total:
            return [i for i, _ in listed[start : start + k]]
    return None


def _swap(listed: list[tuple[int, int]], surplus: int) -> tuple[int, int] | None:
    """(missed, doubled): one event missed and another applied twice, the doubled one's
    hash exceeding the missed one's by ``surplus``."""
    by_hash = {h: i for i, h in listed}
    for doubled, h in listed:
        missed = by_hash.get(h - surplus)
        if missed is not None and missed != doubled:
            return missed, doubled
    return None


def audit(
    conn: psycopg.Connection[Any],
    schema: str,
    consumer: str,
    topics: Sequence[str],
    *,
    key: PartitionKey,
    partitions: int,
) -> list[PartitionAudit]:
    """Audit every partition of ``consumer``, in one repeatable-read snapshot."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return [
            audit_partition(conn, schema, consumer, topics, Partition(key, partitions, k))
            for k in range(partitions)
        ]

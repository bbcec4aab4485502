"""``./scripts/bench audit``: the completeness audit on a long log, and what its fold costs.

1. A fresh schema gets ``events`` events (1,000,000; 100,000 with ``--quick``): streams of 10
   ``bench.Account`` events, appended 10,000 per save by COPY.
2. A follower of the catch-up benchmark's projection (one row per stream) catches up from
   zero at batch 5,000, folding every batch's applied ids into its tracking row.
3. ``eventkit audit``'s check runs over the whole log, complete (one aggregate query), and
   again after a batch of 1,000 events is folded a second time by hand, when it names the
   1,000 events (the aggregate, then every event's id and hash in log order).
4. The fold itself: the tracking row's update of a batch of 1,000 and of 100 applied
   events, with the fold and without it, interleaved, 200 times each on one connection;
   the difference of the medians is what the fold adds to a batch's transaction.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from uuid import uuid4

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import sql

from eventkit.benchmarks.aggregates import Account
from eventkit.benchmarks.proj_systems import StreamCounts
from eventkit.benchmarks.report import format_rate, format_table, write_json
from eventkit.benchmarks.systems import drop_schemas
from eventkit.domain.names import EVENT_TYPES
from eventkit.infrastructure.audit import audit
from eventkit.infrastructure.database import resolve_database_url
from eventkit.infrastructure.factory import mapper_for, shared_pool
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.migrations import migrate
from eventkit.infrastructure.partitions import Partition
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.follower import BatchReport, Follower, FollowerOptions

FULL_EVENTS = 1_000_000
QUICK_EVENTS = 100_000
SAVE = 10_000
BATCH = 5_000
REPLAYED = 1_000
FOLD_ROUNDS = 200


@dataclass(frozen=True)
class AuditResult:
    """One measured row, as written to ``--json``."""

    what: str
    events: int
    seconds: float
    detail: str
    suite: str = "audit"


def register(benchmarks: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = benchmarks.add_parser(
        "audit", help="the completeness audit on 1,000,000 events, and the fold's cost"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_EVENTS:,} events instead of {FULL_EVENTS:,}"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results to FILE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    events = QUICK_EVENTS if args.quick else FULL_EVENTS
    url = resolve_database_url(Settings.from_env())
    schema = f"bench_{uuid4().hex[:8]}_audit"
    results: list[AuditResult] = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, schema)
        settings = Settings(database_url=url, schema=schema)
        results.append(_append(settings, events))
        results.append(_catch_up(settings, events))
        results += _audits(settings, events)
        results += _fold_cost(settings)
    finally:
        drop_schemas(url, [schema])
    print(
        format_table(
            ["suite", "what", "events", "seconds", "detail"],
            [[r.suite, r.what, f"{r.events:,}", f"{r.seconds:.4f}", r.detail] for r in results],
        )
    )
    if args.json:
        write_json(args.json, [asdict(r) for r in results])
        print(f"wrote {args.json}")
    print(f"finished in {time.perf_counter() - started:.1f} s")
    return 0


def _append(settings: Settings, events: int) -> AuditResult:
    pool, _ = shared_pool(settings)
    recorder = PostgresEventRecorder(pool, settings.schema)
    opened = EVENT_TYPES.declared_name(Account.Opened)
    noted = EVENT_TYPES.declared_name(Account.Noted)
    stamp = b'"timestamp":"2026-12-03T10:00:00+00:00"'
    started = time.perf_counter()
    for first in range(0, events, SAVE):
        batch = []
        for n in range(first, min(first + SAVE, events), 10):
            stream = uuid4()
            batch.append(
                StoredEvent(
                    stream,
                    1,
                    opened,
                    b"{" + stamp + b',"originator_topic":"bench.Account","name":"a","amount":1}',
                )
            )
            batch += [
                StoredEvent(stream, v, noted, b"{" + stamp + b',"text":"t","amount":%d}' % n)
                for v in range(2, 11)
            ]
        recorder.insert_events(batch)
    seconds = time.perf_counter() - started
    return AuditResult("append", events, seconds, f"{format_rate(events / seconds)} events/s")


def _catch_up(settings: Settings, events: int) -> AuditResult:
    pool, url = shared_pool(settings)
    done = threading.Event()
    counted = 0

    def count(report: BatchReport) -> None:
        nonlocal counted
        counted += report.applied + report.parked
        if counted >= events:
            done.set()

    mapper = mapper_for(pool, settings.schema)
    follower = Follower(
        StreamCounts.name,
        ProjectionApplier(StreamCounts(), settings.schema, mapper=mapper),
        Partition(),
        FollowerOptions(
            url=url,
            recorder=PostgresEventRecorder(pool, settings.schema),
            worker_id="bench-audit",
            batch_size=BATCH,
            on_batch=count,
        ),
    )
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), name="bench-audit")
    started = time.perf_counter()
    thread.start()
    finished = done.wait(timeout=events / 200 + 60)
    seconds = time.perf_counter() - started
    stop.set()
    thread.join(timeout=60)
    if not finished:
        raise RuntimeError(f"the follower applied {counted} of {events} events")
    return AuditResult(
        f"catch-up (batch {BATCH:,}, folding)",
        events,
        seconds,
        f"{format_rate(events / seconds)} events/s",
    )


def _audit(settings: Settings) -> tuple[float, list[str]]:
    pool, _ = shared_pool(settings)
    started = time.perf_counter()
    with pool.connection() as conn:
        results = audit(
            conn,
            settings.schema,
            StreamCounts.name,
            StreamCounts.topics(),
            key=StreamCounts.partition_key,
            partitions=1,
        )
    seconds = time.perf_counter() - started
    lines = [line for r in results for line in r.describe().splitlines()]
    return seconds, lines


def _audits(settings: Settings, events: int) -> list[AuditResult]:
    seconds, lines = _audit(settings)
    if "complete" not in lines[0] or "INCOMPLETE" in lines[0]:
        raise RuntimeError(f"the audit of a clean catch-up failed: {lines[:3]}")
    complete = AuditResult("audit, complete", events, seconds, "one aggregate query")
    pool, _ = shared_pool(settings)
    recorder = PostgresEventRecorder(pool, settings.schema)
    some = recorder.read_notifications(Position.ORIGIN, events // 2 + REPLAYED)
    replayed = [n.id for n in some[-REPLAYED:]]
    with pool.connection() as conn:
        Tracking(settings.schema).fold(conn, StreamCounts.name, 0, replayed)
    seconds, lines = _audit(settings)
    named = sum("applied twice" in line for line in lines)
    if named != REPLAYED:
        raise RuntimeError(f"the audit named {named} of {REPLAYED} replayed events: {lines[:3]}")
    return [
        complete,
        AuditResult(
            f"audit, {REPLAYED:,} events applied twice",
            events,
            seconds,
            f"named all {named:,}",
        ),
    ]


def _fold_cost(settings: Settings) -> list[AuditResult]:
    pool, _ = shared_pool(settings)
    tracking = Tracking(settings.schema)
    plain = sql.SQL(
        "UPDATE {} SET transaction_id = %s, notification_id = %s, updated_at = clock_timestamp()"
        " WHERE consumer = %s AND partition = %s AND transaction_id = %s"
        " AND notification_id = %s RETURNING 1"
    ).format(sql.Identifier(settings.schema, "tracking"))
    results = []
    position = Position(1, 1)
    with pool.connection() as conn:
        with conn.transaction():
            tracking.set(conn, "fold-cost", position)
        for batch in (1000, 100):
            folded: list[float] = []
            bare: list[float] = []
            for r in range(FOLD_ROUNDS * 2):
                new = Position(position.transaction_id + 1, position.notification_id + batch)
                ids = range(position.notification_id + 1, new.notification_id + 1)
                started = time.perf_counter()
                with conn.transaction():
                    if r % 2 == 0:
                        tracking.advance(conn, "fold-cost", position, new, applied=ids)
                    else:
                        old, now = position, new
                        conn.execute(
                            plain,
                            (now.transaction_id, now.notification_id, "fold-cost", 0,
                             old.transaction_id, old.notification_id),
                        ).fetchone()  # fmt: skip
                (folded if r % 2 == 0 else bare).append(time.perf_counter() - started)
                position = new
            with_fold, without = statistics.median(folded), statistics.median(bare)
            results.append(
                AuditResult(
                    f"fold of a {batch:,}-event batch",
                    batch,
                    with_fold - without,
                    f"tracking update {with_fold * 1e6:,.0f} us with the fold, "
                    f"{without * 1e6:,.0f} us without (medians of {FOLD_ROUNDS})",
                )
            )
    return results

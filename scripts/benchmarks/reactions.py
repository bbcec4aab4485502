"""``eventkit bench reactions``: reactions end to end, from the event's commit to the reaction
done, with the PostgreSQL broker and with RabbitMQ where one is reachable.

Two measurements per broker, each in a fresh schema, with one reaction whose handler does
nothing but run (so what is measured is eventkit's and the broker's path: the follower's
hand-over, the broker, the actor loading and decoding the event, the ledger transaction):

* **throughput**: ``events`` events are in the log before the reaction starts (follower and
  8 dramatiq worker threads in this process); reactions/s = events / seconds until the
  ledger holds all of them.
* **latency**: the reaction runs while a writer (a process of its own) saves 10-event
  streams at a fixed offered rate (1,000 events/s) for ``seconds``; latency of an event =
  the ledger's ``executed_at`` (``clock_timestamp()`` when its message was recorded, just before the
  commit) - the event's ``recorded_at`` (at its insert, just before its commit). One
  server, one clock. *kept up* says every event's reaction ran within 10 s of the writer
  stopping; reactions/s is the reactions executed over the time from the first save until
  then.

Each row also gives ``cpu us/msg``: the CPU time (user and system, from ``/proc``) that the
worker processes used over the row's window (the first process runs the follower too),
divided by the messages executed. CPU time is what a loaded machine distorts least: a
process that waits for a CPU uses none meanwhile.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

from psycopg import sql

from eventkit.benchmarks.aggregates import Account, open_account
from eventkit.benchmarks.report import format_ms, format_rate, format_table, write_json
from eventkit.benchmarks.server_cpu import process_cpu_s
from eventkit.bootstrap import tune_gc
from eventkit.domain.application import Application
from eventkit.infrastructure.broker import BrokerKind, reachable
from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.settings import Settings
from eventkit.projections.projection import handles
from eventkit.projections.reaction import Reaction, ReactionContext
from eventkit.projections.reactor import ReactionRuntime, reaction_runtime

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
STREAM_EVENTS = 10


class Noop(Reaction):
    """Reacts to every benchmark event by doing nothing."""

    name = "bench_noop"
    start_from = "origin"  # events are written before the runtime starts

    @handles
    def opened(self, event: Account.Opened, context: ReactionContext) -> None:
        pass

    @handles
    def noted(self, event: Account.Noted, context: ReactionContext) -> None:
        pass


@dataclass(frozen=True)
class ReactionResult:
    suite: str
    system: str
    broker: str
    processes: int
    events: int
    offered_per_s: float | None
    events_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    kept_up: bool
    seconds: float
    #: CPU microseconds of the worker processes per message executed (None off Linux).
    cpu_us_per_msg: float | None = None


def register(benchmarks: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = benchmarks.add_parser(
        "reactions", help="reactions/s and latency, PostgreSQL broker and RabbitMQ"
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs (under 90 s)")
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument(
        "--rabbitmq",
        default=RABBITMQ_URL,
        metavar="URL",
        help="RabbitMQ to measure too, when reachable (default %(default)s; 'none' to skip)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1, 2],
        metavar="N",
        help="worker processes to measure with (default: 1 and 2); the first runs the follower too",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    tune_gc()
    events = 4_000 if args.quick else 20_000
    seconds = 8.0 if args.quick else 30.0
    brokers: list[tuple[BrokerKind, str | None]] = [(BrokerKind.POSTGRES, None)]
    if args.rabbitmq != "none" and reachable(args.rabbitmq, 5672):
        brokers.append((BrokerKind.RABBITMQ, args.rabbitmq))
    else:
        print(f"RabbitMQ at {args.rabbitmq} not reachable: PostgreSQL broker only")
    results = []
    for kind, url in brokers:
        for processes in args.processes:
            results.append(_throughput(kind, url, events, processes))
            print(_table(results[-1:]), flush=True)
            results.append(_latency(kind, url, 1_000, seconds, processes))
            print(_table(results[-1:]), flush=True)
    print()
    print(_table(results))
    if args.json:
        write_json(args.json, [asdict(r) for r in results])
    return 0


def _setup(
    kind: BrokerKind, broker_url: str | None, schema: str | None = None, *, follow: bool = True
) -> tuple[Settings, ReactionRuntime, Any]:
    base = Settings.from_env()
    settings = Settings(
        database_url=base.database_url,
        schema=schema or f"bench_reactions_{uuid4().hex[:8]}",
        home=base.home,
        broker_url=broker_url,
    )
    _, url = shared_pool(settings)
    runtime = reaction_runtime([Noop()], settings, worker_id="bench", follow=follow)
    app = Application(
        {
            "PERSISTENCE_MODULE": "eventkit.infrastructure.factory",
            "DATABASE_URL": url,
            "EVENTKIT_SCHEMA": settings.schema,
        }
    )
    return settings, runtime, app


def _serve(schema: str, kind: str, broker_url: str | None, stop: Any) -> None:
    """Another worker process: the reaction's actors only (the follower runs in the main
    process), until ``stop`` is set."""
    tune_gc()
    _, runtime, _ = _setup(BrokerKind(kind), broker_url, schema, follow=False)
    runtime.run(stop)


@contextmanager
def _more_processes(settings: Settings, kind: BrokerKind, count: int) -> Iterator[list[int]]:
    """``count`` more worker processes for the duration of the block; yields the pids of
    all the worker processes, this one first."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    processes = [
        context.Process(
            target=_serve, args=(settings.schema, kind.value, settings.broker_url, stop)
        )
        for _ in range(count)
    ]
    for p in processes:
        p.start()
    try:
        yield [os.getpid(), *(p.pid for p in processes if p.pid is not None)]
    finally:
        stop.set()
        for p in processes:
            p.join(60)


def _executed(settings: Settings) -> int:
    pool, _ = shared_pool(settings)
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(settings.schema, "reaction_ledger")
            )
        ).fetchone()
    return 0 if row is None else int(row[0])


def _drop(settings: Settings) -> None:
    pool, _ = shared_pool(settings)
    with pool.connection() as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(settings.schema)))


def _throughput(
    kind: BrokerKind, broker_url: str | None, events: int, processes: int
) -> ReactionResult:
    settings, runtime, app = _setup(kind, broker_url)
    try:
        for _ in range(events // STREAM_EVENTS):
            app.save(open_account(STREAM_EVENTS))
        with _more_processes(settings, kind, processes - 1) as pids:
            time.sleep(3.0 if processes > 1 else 0)  # the other processes start
            stop = threading.Event()
            thread = threading.Thread(target=runtime.run, args=(stop,), daemon=True)
            cpu_from = process_cpu_s(pids)
            started = time.perf_counter()
            thread.start()
            deadline = started + 300
            done = 0
            while done < events and time.perf_counter() < deadline:
                time.sleep(0.05)
                done = _executed(settings)
            elapsed = time.perf_counter() - started
            cpu_us = _cpu_us_per_msg(cpu_from, process_cpu_s(pids), done)
            stop.set()
            thread.join(60)
    finally:
        _drop(settings)
    return ReactionResult(
        suite="throughput",
        system="eventkit",
        broker=kind.value,
        processes=processes,
        events=events,
        offered_per_s=None,
        events_per_s=done / elapsed,
        p50_ms=None,
        p95_ms=None,
        p99_ms=None,
        max_ms=None,
        kept_up=done >= events,
        seconds=round(elapsed, 2),
        cpu_us_per_msg=cpu_us,
    )


def _cpu_us_per_msg(before: float | None, after: float | None, messages: int) -> float | None:
    if before is None or after is None or messages == 0:
        return None
    return round((after - before) / messages * 1e6, 1)


def _latency(
    kind: BrokerKind, broker_url: str | None, rate: float, seconds: float, processes: int
) -> ReactionResult:
    settings, runtime, _ = _setup(kind, broker_url)
    try:
        with _more_processes(settings, kind, processes - 1) as pids:
            time.sleep(3.0 if processes > 1 else 0)  # the other processes start
            row, saved, offered, done, elapsed, cpu_us = _offer(
                settings, runtime, rate, seconds, pids
            )
    finally:
        _drop(settings)
    p50, p95, p99 = (float(v) for v in row[0])
    return ReactionResult(
        suite="latency",
        system="eventkit",
        broker=kind.value,
        processes=processes,
        events=saved,
        offered_per_s=round(offered, 1),
        events_per_s=done / elapsed,
        p50_ms=round(p50, 2),
        p95_ms=round(p95, 2),
        p99_ms=round(p99, 2),
        max_ms=round(float(row[1]), 2),
        kept_up=done >= saved,
        seconds=seconds,
        cpu_us_per_msg=cpu_us,
    )


def _write_paced(
    schema: str, database_url: str | None, rate: float, seconds: float, results: Any
) -> None:
    """Save 10-event streams at ``rate`` events/s for ``seconds``; report (saved, offered/s)."""
    app = Application(
        {
            "PERSISTENCE_MODULE": "eventkit.infrastructure.factory",
            "EVENTKIT_SCHEMA": schema,
            **({"DATABASE_URL": database_url} if database_url else {}),
        }
    )
    app.save(open_account(STREAM_EVENTS))  # warm: connections, mapper, statements
    saved = STREAM_EVENTS
    interval = STREAM_EVENTS / rate
    started = time.perf_counter()
    while (now := time.perf_counter()) - started < seconds:
        due = started + ((saved - STREAM_EVENTS) // STREAM_EVENTS) * interval
        if now < due:
            time.sleep(due - now)
        app.save(open_account(STREAM_EVENTS))
        saved += STREAM_EVENTS
    results.put((saved, (saved - STREAM_EVENTS) / (time.perf_counter() - started)))


def _offer(
    settings: Settings, runtime: ReactionRuntime, rate: float, seconds: float, pids: list[int]
) -> tuple[Any, int, float, int, float, float | None]:
    """Save at ``rate`` events/s for ``seconds`` while the reaction runs; drain; read the
    latencies. Returns (percentiles row, saved, offered/s, executed, seconds from the first
    save until drained, CPU us of the worker processes ``pids`` per message meanwhile)."""
    pool, _ = shared_pool(settings)
    stop = threading.Event()
    thread = threading.Thread(target=runtime.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(1.0)  # the follower and the dramatiq consumers start
    # The writer runs in a process of its own, as an application's would: in this one it
    # would take the reactions' interpreter lock.
    context = multiprocessing.get_context("spawn")
    results: Any = context.Queue()
    writer = context.Process(
        target=_write_paced, args=(settings.schema, settings.database_url, rate, seconds, results)
    )
    cpu_from = process_cpu_s(pids)
    started = time.perf_counter()
    writer.start()
    saved, offered = results.get(timeout=seconds + 120)
    writer.join(30)
    drain_deadline = time.perf_counter() + 10
    while _executed(settings) < saved and time.perf_counter() < drain_deadline:
        time.sleep(0.05)
    done = _executed(settings)
    elapsed = time.perf_counter() - started  # from the first save until drained
    cpu_us = _cpu_us_per_msg(cpu_from, process_cpu_s(pids), done)
    stop.set()
    thread.join(60)
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms),"
                " max(ms) FROM (SELECT extract(epoch FROM l.executed_at - e.recorded_at)"
                " * 1000 AS ms FROM {} l JOIN {} e USING (notification_id)) t"
            ).format(
                sql.Identifier(settings.schema, "reaction_ledger"),
                sql.Identifier(settings.schema, "stored_events"),
            )
        ).fetchone()
    assert row is not None
    return row, saved, offered, done, elapsed, cpu_us


def _table(results: list[ReactionResult]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else format_ms(value)

    return format_table(
        [
            "suite",
            "broker",
            "procs",
            "events",
            "offered/s",
            "reactions/s",
            "p50",
            "p95",
            "p99",
            "max",
            "kept up",
            "cpu us/msg",
        ],
        [
            [
                r.suite,
                r.broker,
                str(r.processes),
                str(r.events),
                "-" if r.offered_per_s is None else format_rate(r.offered_per_s),
                format_rate(r.events_per_s),
                ms(r.p50_ms),
                ms(r.p95_ms),
                ms(r.p99_ms),
                ms(r.max_ms),
                "yes" if r.kept_up else "NO",
                "-" if r.cpu_us_per_msg is None else f"{r.cpu_us_per_msg:.0f}",
            ]
            for r in results
        ],
    )

"""``eventkit bench live``: how far behind the log a running projection is while writers save
at a fixed offered rate, eventkit against eventsourcing's ``ProjectionRunner``, in one run
against one server.

For each offered rate and system, in a fresh schema: the projection starts on an empty log
in the benchmark's process (eventkit: a :class:`~projections.follower.Follower` with
the defaults of ``eventkit workers``; eventsourcing: a ``ProjectionRunner`` into a
PostgreSQL view, see :mod:`.proj_systems`). Then ``writers`` processes each save a new
stream of ``batch`` events on a fixed schedule (:class:`~.proj_writers.Pace`) through a
warm-up and a measuring window, and stop. The projection has ``DRAIN_S`` seconds after the
writers stopped to process every event offered: *kept up* says it did.

Latency of an event = when the view's transaction that applied it had committed (the
projection's process, ``time.time()`` right after the commit: eventkit's ``on_batch``,
eventsourcing's view after its transaction) - when the event was committed: for eventkit
its ``recorded_at`` (``clock_timestamp()`` at insert, in the same one-statement
transaction; slightly before the commit, so it errs high), for eventsourcing, whose table
records no time, when the writer's ``save()`` returned (just after the commit). One
machine, one clock. Only events saved in the window count. An event still unprocessed at
the end of the drain counts with its latency so far, a lower bound: such rows are marked
``>=``.

offered/s is the rate the writers achieved in the window (the server may not take the
target); projected/s the events the projection committed in the window, per second.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from uuid import uuid4

from eventsourcing.projection import ProjectionRunner

from eventkit.benchmarks.proj_latency import (
    Applied,
    LiveResult,
    format_latency,
    summarise,
    table,
    yes_no,
)
from eventkit.benchmarks.proj_systems import (
    EVENTKIT,
    EVENTSOURCING,
    SHORT,
    PlainLog,
    PlainStreamCounts,
    PlainStreamCountsView,
    StreamCounts,
    create_schema,
    describe_server,
    eventsourcing_env,
)
from eventkit.benchmarks.proj_writers import Pace, Writers
from eventkit.benchmarks.report import format_rate, write_json
from eventkit.benchmarks.server_cpu import ServerCpu, machine_busy_s, process_cpu_s
from eventkit.benchmarks.systems import drop_schemas
from eventkit.bootstrap import tune_gc
from eventkit.infrastructure.database import resolve_database_url
from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.partitions import Partition
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.follower import BatchReport, Follower, FollowerOptions

RATES = (2_000, 5_000, 10_000)
WRITERS = 4
BATCH = 10
#: Seconds after the writers stop within which the projection must have processed all.
DRAIN_S = 2.0


@dataclass(frozen=True)
class Timing:
    """How long writers warm up, then are measured, per rate and system."""

    warmup_s: float
    duration_s: float


QUICK = Timing(warmup_s=0.5, duration_s=10.0)
FULL = Timing(warmup_s=2.0, duration_s=30.0)


class LiveError(EventkitError):
    """A live benchmark case could not be measured."""


def register(benchmarks: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = benchmarks.add_parser(
        "live",
        help="projection latency under writers at a fixed offered rate: eventkit vs eventsourcing",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"{QUICK.duration_s:g} s measured per rate and system instead of "
            f"{FULL.duration_s:g} s (well under 90 s in all)"
        ),
    )
    parser.add_argument(
        "--rates",
        type=lambda text: tuple(int(r) for r in text.split(",")),
        default=RATES,
        metavar="R[,R...]",
        help="offered events/s to measure (default %(default)s)",
    )
    parser.add_argument(
        "--systems",
        type=lambda text: tuple(text.split(",")),
        default=(EVENTKIT, EVENTSOURCING),
        metavar="S[,S...]",
        help="eventkit, eventsourcing or both (default)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results to FILE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    tune_gc()  # as `eventkit workers` does; both systems' projections run in this process
    timing = QUICK if args.quick else FULL
    url = resolve_database_url(Settings.from_env())
    print(describe_server(url))
    print(
        f"each rate and system: {WRITERS} writer processes save a new stream of {BATCH} events "
        f"on a schedule, {timing.warmup_s:g} s warm-up + {timing.duration_s:g} s measured; "
        f"then {DRAIN_S:g} s to drain\n"
    )
    sys.stdout.flush()
    run_id = uuid4().hex[:8]
    results: list[LiveResult] = []
    notes: list[str] = []
    with Writers(WRITERS) as writers:
        for rate in args.rates:
            for system in args.systems:
                schema = f"bench_{run_id}_live_{SHORT[system]}_{rate}"
                try:
                    result, note = _measure(
                        writers, url, schema, system=system, rate=rate, timing=timing
                    )
                finally:
                    drop_schemas(url, [schema])
                results.append(result)
                if note:
                    notes.append(note)
    print()
    print(table(results))
    print(
        "\noffered/s: achieved by the writers in the window; projected/s: events the "
        "projection committed in the window;\nlatency: view commit - event commit "
        "(eventkit: recorded_at; eventsourcing: writer's save() returned); '>=': events\n"
        f"still unprocessed {DRAIN_S:g} s after the writers stopped count with their latency "
        "so far; kept up: all processed by then;\nproj CPU %: the projection's process "
        "in the window, % of one CPU (the writers are processes of their own);\n"
        "writers / server / machine CPU %: the writer processes, every process of the "
        "PostgreSQL server, and the whole machine (the rest: others' work) in % of one CPU;\n"
        "GC max / total ms: the projection process's garbage collections in the window;\n"
        "to read / read-view p99 (eventkit): the latency's two parts, recorded_at to the "
        "follower's read that returned the event, and that read to the view's commit"
    )
    for note in notes:
        print(note)
    if args.json:
        write_json(args.json, [{"suite": r.suite, **asdict(r)} for r in results])
        print(f"wrote {args.json}")
    print(f"finished in {time.perf_counter() - started:.1f} s")
    return 0


def _measure(
    writers: Writers, url: str, schema: str, *, system: str, rate: int, timing: Timing
) -> tuple[LiveResult, str | None]:
    env = create_schema(url, system, schema)
    run_projection = _eventkit if system == EVENTKIT else _eventsourcing
    interval = BATCH / rate
    jobs = [
        Pace(
            system,
            env,
            rate / WRITERS,
            BATCH,
            offset_s=i * interval,
            duration_s=timing.warmup_s + timing.duration_s,
        )
        for i in range(WRITERS)
    ]
    with (
        run_projection(url, schema) as (applied, count),
        CpuShares(url, writers) as cpu,
        GcPauses() as gc_pauses,
    ):
        start_at = writers.start(jobs)
        # The writers are processes of their own: this process's CPU time in the window
        # is the projection's (and this thread's sleeps).
        time.sleep(max(0.0, start_at + timing.warmup_s - time.time()))
        cpu.begin()
        gc_pauses.begin()
        time.sleep(max(0.0, start_at + timing.warmup_s + timing.duration_s - time.time()))
        shares = cpu.end(timing.duration_s)
        gc_max_ms, gc_total_ms = gc_pauses.end()
        saved = writers.results(timeout_s=timing.warmup_s + timing.duration_s + 120)
        written = sum(s.events for s in saved)
        stopped_at = max((t for s in saved for t in s.saved_at), default=time.time())
        deadline = stopped_at + DRAIN_S
        while count() < written and time.time() < deadline:
            time.sleep(0.005)
    window = (start_at + timing.warmup_s, start_at + timing.warmup_s + timing.duration_s)
    result, note = summarise(
        system,
        rate,
        writers=WRITERS,
        batch=BATCH,
        duration_s=timing.duration_s,
        drain_s=DRAIN_S,
        saved=saved,
        applied=applied,
        window=window,
        stopped_at=stopped_at,
    )
    print(
        f"  {system:<14} target {rate:>6,}/s offered {format_rate(result.offered_per_s):>6}/s "
        f"p99 {format_latency(result, result.p99_ms):>9} ms  kept up: {yes_no(result.kept_up)}"
        f"  projection CPU {_pct(shares.projection)}, writers {_pct(shares.writers)}, "
        f"server {_pct(shares.server)}, machine {_pct(shares.machine)}",
        file=sys.stderr,
    )
    result = replace(
        result,
        projection_cpu_pct=shares.projection,
        writers_cpu_pct=shares.writers,
        server_cpu_pct=shares.server,
        machine_cpu_pct=shares.machine,
        gc_max_ms=gc_max_ms,
        gc_total_ms=gc_total_ms,
    )
    return result, note


class GcPauses:
    """The garbage collector's pauses in this process (the projection's) in the window,
    from ``gc.callbacks``: a collection stops every thread of the process."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._pauses: list[float] = []
        self._on = False

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if not self._on:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self._pauses.append(time.perf_counter() - self._started)
            self._started = None

    def begin(self) -> None:
        self._pauses.clear()
        self._on = True

    def end(self) -> tuple[float, float]:
        """The longest pause and all pauses together, in ms."""
        self._on = False
        return max(self._pauses, default=0.0) * 1000, sum(self._pauses) * 1000

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


@dataclass(frozen=True)
class Shares:
    """CPU used in a window by each party, in % of one CPU (None: not measurable here)."""

    projection: float
    writers: float | None
    server: float | None
    machine: float | None


class CpuShares:
    """Where the machine's CPUs go while a rate is measured: the projection (this
    process), the writer processes, the PostgreSQL server, and the whole machine (the rest
    is other work on it: on a shared machine, what the run competed with)."""

    def __init__(self, url: str, writers: Writers) -> None:
        self._server = ServerCpu.find(url)
        self._writers = writers.pids
        self._from: tuple[float, float | None, dict[int, int] | None, float | None] | None = None

    def _sample(self) -> tuple[float, float | None, dict[int, int] | None, float | None]:
        server = self._server.sample() if self._server is not None else None
        return (time.process_time(), process_cpu_s(self._writers), server, machine_busy_s())

    def begin(self) -> None:
        self._from = self._sample()

    def end(self, duration_s: float) -> Shares:
        if self._from is None:
            raise LiveError("CpuShares.end() before begin()")
        (p0, w0, s0, m0), (p1, w1, s1, m1) = self._from, self._sample()

        def pct(seconds: float | None) -> float | None:
            return None if seconds is None else seconds / duration_s * 100

        server = None
        if s0 is not None and s1 is not None and self._server is not None:
            # Every process of the server, backends that started in the window included.
            ticks = sum(t - s0.get(pid, 0) for pid, t in s1.items())
            server = ticks / os.sysconf("SC_CLK_TCK")
        return Shares(
            projection=(p1 - p0) / duration_s * 100,
            writers=pct(None if w0 is None or w1 is None else w1 - w0),
            server=pct(server),
            machine=pct(None if m0 is None or m1 is None else m1 - m0),
        )

    def __enter__(self) -> CpuShares:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()


#: A running projection: what it applied so far, and how many events that is.
Running = Iterator[tuple[Applied, Callable[[], int]]]


@contextmanager
def _eventkit(url: str, schema: str) -> Running:
    pool, _ = shared_pool(Settings(database_url=url, schema=schema))
    applied = Applied(array("q"), array("d"), array("d"))

    def on_batch(report: BatchReport) -> None:
        now = time.time()
        for n in report.notifications:
            applied.ids.append(n.id)
            applied.applied_at.append(now)
            applied.committed_at.append(n.recorded_at.timestamp())
            applied.read_at.append(report.read_at)

    follower = Follower(
        StreamCounts.name,
        ProjectionApplier(StreamCounts(), schema, mapper=PydanticMapper()),
        Partition(),
        FollowerOptions(
            url=url,
            recorder=PostgresEventRecorder(pool, schema),
            worker_id="bench-live",
            on_batch=on_batch,
        ),
    )
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), name="live-eventkit")
    thread.start()
    try:
        if not follower.caught_up.wait(30):
            raise LiveError("the eventkit worker did not start reading the log within 30 s")
        yield applied, lambda: len(applied.ids)
    finally:
        stop.set()
        thread.join(timeout=60)


@contextmanager
def _eventsourcing(url: str, schema: str) -> Running:
    applied = Applied(array("q"), array("d"), array("d"))

    def observe(notification_id: int, committed_at: float) -> None:
        applied.ids.append(notification_id)
        applied.applied_at.append(committed_at)

    PlainStreamCounts.observer = observe
    try:
        with ProjectionRunner(
            application_class=PlainLog,
            projection_class=PlainStreamCounts,
            view_class=PlainStreamCountsView,
            env=eventsourcing_env(url, schema),
        ) as runner:
            yield applied, lambda: len(applied.ids)
            runner.run_forever(timeout=0)  # re-raises the runner's error, if it had one
    finally:
        PlainStreamCounts.observer = None

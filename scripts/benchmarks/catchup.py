"""``eventkit bench catchup``: how fast a projection processes an existing log from zero,
eventkit against eventsourcing's ``ProjectionRunner``, in one run against one server.

Each system's log is filled first (``writers`` processes saving ``batch`` events per save:
100 new streams of 10 events each), then vacuumed and analysed as autovacuum would have
done for an old log. Then each projection starts from zero in the benchmark's process and
is timed until it has committed the last event (see :mod:`.proj_systems` for the view):

* eventkit ``rebuild``: :func:`projections.rebuild.rebuild` with its default batch size,
  from its start until the new view is swapped in and the old one dropped;
* eventkit ``worker``: a fresh :class:`~projections.follower.Follower` of the projection
  (each with its own tracking name and tables), at the batch size of ``eventkit workers``
  and at 5,000;
* eventsourcing ``ProjectionRunner``: from its construction until the view has recorded
  the last event, one transaction per event as eventsourcing's examples do.

Beside them, the physical limit of the same rows in the same run, and what decoding adds:

* eventkit ``read``: the follower's own read (:meth:`PostgresEventRecorder.scan`, batches of
  5,000) over the whole log, nothing decoded or written;
* eventkit ``read+decode``: the same, each event decoded by the projection's mapper.

Each eventkit method runs in a fresh process of its own, so its row reports that process's
CPU time per event (client us/ev; the stages are the differences between rows: read,
decode, then apply + view writes + position in the worker) and its peak resident memory
(Linux's ``VmHWM``). Every view is checked afterwards: one row per stream, every event counted
once.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from uuid import uuid4

import psycopg
from eventsourcing.projection import ProjectionRunner
from psycopg import sql

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
    settle,
)
from eventkit.benchmarks.proj_writers import Load, Writers
from eventkit.benchmarks.report import format_rate, format_ratio, format_table, write_json
from eventkit.benchmarks.systems import drop_schemas
from eventkit.bootstrap import tune_gc
from eventkit.infrastructure.database import resolve_database_url
from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.partitions import Partition
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.follower import BatchReport, Follower, FollowerOptions
from eventkit.projections.rebuild import rebuild

QUICK_EVENTS = 20_000
FULL_EVENTS = 200_000
LOAD_WRITERS = 2
EVENTS_PER_STREAM = 10
STREAMS_PER_SAVE = 100
#: eventkit's batch sizes: ``eventkit workers``' default, and ``eventkit rebuild``'s.
WORKER_BATCHES = (1000, 5000)
REBUILD_BATCH = 5000
READ_BATCH = 5000
#: A projection slower than this is given up on (a failed run, not a measurement).
SLOWEST_PER_S = 200


class CatchupError(EventkitError):
    """A projection did not finish catching up, or its view is wrong."""


@dataclass(frozen=True)
class CatchupResult:
    """One measured row, as written to ``--json``."""

    system: str
    method: str
    events: int
    projection_batch: int
    seconds: float
    events_per_s: float
    writers: int = LOAD_WRITERS
    batch: int = EVENTS_PER_STREAM * STREAMS_PER_SAVE
    ratio_vs_eventsourcing: float | None = None
    offered_per_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    kept_up: bool | None = None
    #: CPU time of the process that ran the method, per event.
    client_cpu_us_per_event: float | None = None
    #: Peak resident memory of that process, in MB.
    peak_rss_mb: float | None = None
    suite: str = "catchup"


def register(benchmarks: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = benchmarks.add_parser(
        "catchup",
        help="a projection processing an existing log from zero: eventkit vs eventsourcing",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_EVENTS:,} events instead of {FULL_EVENTS:,} (well under 90 s)",
    )
    parser.add_argument(
        "--events", type=int, metavar="N", help="events in each system's log (overrides --quick)"
    )
    parser.add_argument(
        "--systems",
        type=lambda text: tuple(text.split(",")),
        default=(EVENTKIT, EVENTSOURCING),
        metavar="S[,S...]",
        help="eventkit, eventsourcing or both (default; eventsourcing's runner commits each "
        "event alone, so it takes minutes per 100,000 events)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results to FILE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    tune_gc()  # as `eventkit workers` does; both systems' projections run in this process
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    systems = [s for s in (EVENTKIT, EVENTSOURCING) if s in args.systems]
    url = resolve_database_url(Settings.from_env())
    print(describe_server(url))
    print(
        f"log: {events:,} events per system, {LOAD_WRITERS} writer processes saving "
        f"{STREAMS_PER_SAVE} new streams of {EVENTS_PER_STREAM} events per save\n"
    )
    sys.stdout.flush()
    run_id = uuid4().hex[:8]
    schemas = {system: f"bench_{run_id}_catchup_{SHORT[system]}" for system in systems}
    results: list[CatchupResult] = []
    try:
        envs = {system: create_schema(url, system, schema) for system, schema in schemas.items()}
        with Writers(LOAD_WRITERS) as writers:
            for system in systems:
                _load(writers, system, envs[system], events)
        for system, schema in schemas.items():
            settle(url, system, schema)
        if EVENTKIT in schemas:
            schema = schemas[EVENTKIT]
            for mode in ("read", "read+decode"):
                results.append(_in_process(_measure_read, url, schema, events, mode))
            for batch in WORKER_BATCHES:
                results.append(_in_process(_measure_worker, url, schema, events, batch))
            results.append(_in_process(_measure_rebuild, url, schema, events, None))
        if EVENTSOURCING in schemas:
            results.append(_measure_runner(url, schemas[EVENTSOURCING], events))
    finally:
        drop_schemas(url, list(schemas.values()))
    results = with_ratios(results)
    print()
    print(table(results))
    print(
        "\nseconds: from the projection's start until it committed the last event (rebuild: "
        "until the new view\nwas swapped in; read: until the scan reached the head); ek/es: "
        "events/s divided by eventsourcing's ProjectionRunner's in this run;\nclient us/ev: "
        "CPU time per event of the process that ran the row (eventkit's each in a fresh "
        "process);\npeak MB: that process's peak resident memory"
    )
    if args.json:
        write_json(args.json, [{"suite": r.suite, **asdict(r)} for r in results])
        print(f"wrote {args.json}")
    print(f"finished in {time.perf_counter() - started:.1f} s")
    return 0


def _load(writers: Writers, system: str, env: dict[str, str], events: int) -> None:
    shares = [events // writers.size + (i < events % writers.size) for i in range(writers.size)]
    jobs = [Load(system, env, share, EVENTS_PER_STREAM, STREAMS_PER_SAVE) for share in shares]
    started = time.perf_counter()
    writers.start(jobs)
    saved = writers.results(timeout_s=events / SLOWEST_PER_S + 60)
    seconds = time.perf_counter() - started
    written = sum(s.events for s in saved)
    if written != events:
        raise CatchupError(f"{system}: the writers saved {written} events, not {events}")
    print(
        f"  loaded {system:<14} {written:>9,} events in {seconds:5.1f} s "
        f"({format_rate(written / seconds)} events/s)",
        file=sys.stderr,
    )


def _in_process(
    measure: Callable[[str, str, int, object], CatchupResult],
    url: str,
    schema: str,
    events: int,
    how: object,
) -> CatchupResult:
    """Run ``measure`` in a fresh process; its row with that process's CPU time per event
    and peak resident memory."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: CatchupResult = pool.apply(_measured, (measure, url, schema, events, how))
    print(
        f"  {result.system:<14} {result.method:<20} {result.seconds:7.2f} s "
        f"{format_rate(result.events_per_s):>8} events/s {result.client_cpu_us_per_event:6.1f} "
        f"us/event CPU, peak {result.peak_rss_mb:.0f} MB",
        file=sys.stderr,
    )
    return result


def _measured(
    measure: Callable[[str, str, int, object], CatchupResult],
    url: str,
    schema: str,
    events: int,
    how: object,
) -> CatchupResult:
    tune_gc()  # as `eventkit workers` does
    cpu_from = time.process_time()
    result = measure(url, schema, events, how)
    cpu_s = time.process_time() - cpu_from
    return replace(
        result, client_cpu_us_per_event=cpu_s / events * 1e6, peak_rss_mb=peak_rss_kb() / 1024
    )


def peak_rss_kb() -> int:
    """This process's peak resident memory, in kB.

    Linux's ``VmHWM``: the peak of this process's own memory. Not ``ru_maxrss``, which a
    process started by fork and exec (multiprocessing's spawn) inherits from its parent at
    the fork: every row of a 1,000,000-event run then showed the benchmark's own 94 MB.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, elsewhere bytes


def _measure_read(url: str, schema: str, events: int, mode: object) -> CatchupResult:
    """The follower's read of the whole log (and the mapper's decoding, for
    ``read+decode``), with nothing applied."""
    pool, _ = shared_pool(Settings(database_url=url, schema=schema))
    recorder = PostgresEventRecorder(pool, schema)
    topics = StreamCounts.topics()
    mapper = PydanticMapper()
    decode = mode == "read+decode"
    position, scanned = Position.ORIGIN, 0
    started = time.perf_counter()
    while True:
        scan = recorder.scan(position, READ_BATCH, topics)
        if scan.last is None:
            break
        if decode:
            for notification in scan.notifications:
                mapper.to_domain_event(notification)
        scanned += scan.count
        position = scan.last
    seconds = time.perf_counter() - started
    if scanned != events:
        raise CatchupError(f"eventkit {mode} read {scanned} of {events} events")
    return _result(EVENTKIT, str(mode), events, READ_BATCH, seconds)


def _measure_worker(url: str, schema: str, events: int, batch: object) -> CatchupResult:
    assert isinstance(batch, int)
    pool, _ = shared_pool(Settings(database_url=url, schema=schema))
    counted = 0
    done = threading.Event()

    def count(report: BatchReport) -> None:
        nonlocal counted
        counted += report.applied + report.parked
        if counted >= events:
            done.set()

    suffix = f"__w{batch}"
    follower = Follower(
        f"{StreamCounts.name}#w{batch}",
        ProjectionApplier(StreamCounts(), schema, mapper=PydanticMapper(), table_suffix=suffix),
        Partition(),
        FollowerOptions(
            url=url,
            recorder=PostgresEventRecorder(pool, schema),
            worker_id=f"bench-catchup-w{batch}",
            batch_size=batch,
            on_batch=count,
        ),
    )
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), name=f"catchup-w{batch}")
    started = time.perf_counter()
    thread.start()
    finished = done.wait(timeout=events / SLOWEST_PER_S + 60)
    seconds = time.perf_counter() - started
    stop.set()
    thread.join(timeout=60)
    if not finished:
        raise CatchupError(f"eventkit worker (batch {batch}) counted {counted} of {events}")
    _check_view(url, schema, "stream_counts" + suffix, events)
    return _result(EVENTKIT, f"worker (batch {batch:,})", events, batch, seconds)


def _measure_rebuild(url: str, schema: str, events: int, _: object = None) -> CatchupResult:
    pool, _ = shared_pool(Settings(database_url=url, schema=schema))
    outcome = rebuild(
        StreamCounts,
        url=url,
        schema=schema,
        recorder=PostgresEventRecorder(pool, schema),
        mapper=PydanticMapper(),
        worker_id="bench-catchup-rebuild",
        batch_size=REBUILD_BATCH,
    )
    if outcome.applied != events:
        raise CatchupError(f"eventkit rebuild applied {outcome.applied} of {events} events")
    _check_view(url, schema, "stream_counts", events)
    return _result(EVENTKIT, "rebuild", events, REBUILD_BATCH, outcome.seconds)


def _measure_runner(url: str, schema: str, events: int) -> CatchupResult:
    counted = 0
    done = threading.Event()

    def observe(notification_id: int, committed_at: float) -> None:
        nonlocal counted
        counted += 1
        if counted >= events:
            done.set()

    PlainStreamCounts.observer = observe
    timeout_s = events / SLOWEST_PER_S + 60
    try:
        started = time.perf_counter()
        with ProjectionRunner(
            application_class=PlainLog,
            projection_class=PlainStreamCounts,
            view_class=PlainStreamCountsView,
            env=eventsourcing_env(url, schema),
        ) as runner:
            deadline = time.monotonic() + timeout_s
            while not done.wait(0.1):
                runner.run_forever(timeout=0)  # re-raises the runner's error, if it had one
                if time.monotonic() > deadline:
                    break
            seconds = time.perf_counter() - started
    finally:
        PlainStreamCounts.observer = None
    if not done.is_set():
        raise CatchupError(f"eventsourcing's ProjectionRunner counted {counted} of {events}")
    _check_view(url, schema, "stream_counts", events)
    return _result(EVENTSOURCING, "ProjectionRunner", events, 1, seconds)


def _result(system: str, method: str, events: int, batch: int, seconds: float) -> CatchupResult:
    result = CatchupResult(system, method, events, batch, seconds, events / seconds)
    if system == EVENTSOURCING:
        print(
            f"  {system:<14} {method:<20} {seconds:7.2f} s "
            f"{format_rate(result.events_per_s):>8} events/s",
            file=sys.stderr,
        )
    return result


def _check_view(url: str, schema: str, table_name: str, events: int) -> None:
    """Every stream has one row, and every event was counted once."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(sum(events), 0), count(*) FILTER "
                "(WHERE events <> last_version) FROM {}"
            ).format(sql.Identifier(schema, table_name))
        ).fetchone()
    assert row is not None
    streams, counted, wrong = row
    expected_streams = -(-events // EVENTS_PER_STREAM)
    if (streams, counted, wrong) != (expected_streams, events, 0):
        raise CatchupError(
            f"view {schema}.{table_name} has {streams} streams (expected {expected_streams}), "
            f"{counted} events counted (expected {events}), {wrong} rows whose count is not "
            "their last version"
        )


def with_ratios(results: list[CatchupResult]) -> list[CatchupResult]:
    """Set each eventkit row's events/s as a multiple of eventsourcing's."""
    base = next((r.events_per_s for r in results if r.system == EVENTSOURCING), None)
    return [
        replace(r, ratio_vs_eventsourcing=r.events_per_s / base)
        if r.system != EVENTSOURCING and base and not r.method.startswith("read")
        else r
        for r in results
    ]


def table(results: list[CatchupResult]) -> str:
    """The results as a text table."""
    headers = [
        "suite",
        "system",
        "method",
        "events",
        "batch",
        "seconds",
        "events/s",
        "ek/es",
        "client us/ev",
        "peak MB",
    ]
    rows = [
        [
            r.suite,
            r.system,
            r.method,
            f"{r.events:,}",
            f"{r.projection_batch:,}",
            f"{r.seconds:.2f}",
            format_rate(r.events_per_s),
            format_ratio(r.ratio_vs_eventsourcing),
            "-" if r.client_cpu_us_per_event is None else f"{r.client_cpu_us_per_event:.1f}",
            "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
        ]
        for r in results
    ]
    return format_table(headers, rows)

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
(Linux's ``VmHWM``), and the server's CPU time per event over the row (primary us/ev: every
process of the server, which is the benchmark's own). Every view is checked afterwards: one
row per stream, every event counted once.

With ``--standby`` the benchmark also starts a hot standby of its server
(``pg_basebackup -R``, :mod:`eventkit.testing.standby`) once the log is loaded, and runs the
``read`` and the ``worker (batch 5,000)`` again with the follower reading the log there
(``EVENTKIT_READ_URL``'s path) while the view and its position are written on the primary:
rows ``... on standby``, with the standby's CPU per event beside the primary's.
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
from eventkit.benchmarks.server_cpu import ServerCpu
from eventkit.benchmarks.systems import drop_schemas
from eventkit.bootstrap import tune_gc
from eventkit.infrastructure.database import resolve_database_url
from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.factory import read_recorder, shared_pool
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.partitions import Partition
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.follower import BatchReport, Follower, FollowerOptions
from eventkit.projections.rebuild import rebuild
from eventkit.testing.standby import Standby, StandbyUnavailableError, start_standby

QUICK_EVENTS = 20_000
FULL_EVENTS = 200_000
LOAD_WRITERS = 2
EVENTS_PER_STREAM = 10
STREAMS_PER_SAVE = 100
#: eventkit's batch sizes: ``eventkit workers``' default, and ``eventkit rebuild``'s.
WORKER_BATCHES = (1000, 5000)
REBUILD_BATCH = 5000
READ_BATCH = 5000
#: The worker's batch size of the rows that read a standby.
STANDBY_BATCH = 5000
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
    #: Where the row's follower read the log: ``primary`` or ``standby``.
    read_from: str = "primary"
    #: CPU time of every process of the (primary) server during the row, per event.
    primary_cpu_us_per_event: float | None = None
    #: The same for the standby's server, in rows that read it.
    standby_cpu_us_per_event: float | None = None
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
    parser.add_argument(
        "--standby",
        action="store_true",
        help="also start a hot standby of the server (pg_basebackup -R) and run the read and "
        f"the worker (batch {STANDBY_BATCH:,}) reading the log there, the view written on the "
        "primary",
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
    standby: Standby | None = None
    try:
        envs = {system: create_schema(url, system, schema) for system, schema in schemas.items()}
        with Writers(LOAD_WRITERS) as writers:
            for system in systems:
                _load(writers, system, envs[system], events)
        for system, schema in schemas.items():
            settle(url, system, schema)
        if EVENTKIT in schemas:
            schema = schemas[EVENTKIT]
            if args.standby:
                standby = _start_standby(url)
            for mode in ("read", "read+decode"):
                results.append(_in_process(_measure_read, url, schema, events, mode))
            if standby is not None:
                results.append(
                    _in_process(_measure_read, url, schema, events, "read", standby=standby)
                )
            for batch in WORKER_BATCHES:
                results.append(_in_process(_measure_worker, url, schema, events, batch))
            if standby is not None:
                results.append(
                    _in_process(
                        _measure_worker, url, schema, events, STANDBY_BATCH, standby=standby
                    )
                )
            results.append(_in_process(_measure_rebuild, url, schema, events, None))
        if EVENTSOURCING in schemas:
            results.append(_measure_runner(url, schemas[EVENTSOURCING], events))
    finally:
        if standby is not None:
            standby.stop()
        drop_schemas(url, list(schemas.values()))
    results = with_ratios(results)
    print()
    print(table(results))
    print(
        "\nseconds: from the projection's start until it committed the last event (rebuild: "
        "until the new view\nwas swapped in; read: until the scan reached the head); ek/es: "
        "events/s divided by eventsourcing's ProjectionRunner's in this run;\nclient us/ev: "
        "CPU time per event of the process that ran the row (eventkit's each in a fresh "
        "process);\npeak MB: that process's peak resident memory; primary us/ev, standby "
        "us/ev: CPU time per event of every\nprocess of the server (of the standby) during "
        "the row; 'on standby': the follower read the log from a\nhot standby of the server, "
        "the view and its position were written on the server"
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


def _start_standby(url: str) -> Standby:
    """A hot standby of the server, caught up with the loaded log."""
    started = time.perf_counter()
    try:
        standby = start_standby(url)
    except StandbyUnavailableError as e:
        raise CatchupError(f"--standby: {e}") from None
    standby.replayed(timeout_s=600)
    print(
        f"  started a hot standby of the server (pg_basebackup -R) in "
        f"{time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return standby


#: A measure: (url, schema, events, how, read_url) -> its row.
Measure = Callable[[str, str, int, object, str | None], CatchupResult]


def _in_process(
    measure: Measure,
    url: str,
    schema: str,
    events: int,
    how: object,
    *,
    standby: Standby | None = None,
) -> CatchupResult:
    """Run ``measure`` in a fresh process (its follower reading the log on ``standby``
    when given); its row with that process's CPU time per event and peak resident memory,
    and the server's (and the standby's) CPU time per event meanwhile."""
    context = multiprocessing.get_context("spawn")
    probes = {"primary": ServerCpu.find(url)}
    if standby is not None:
        standby.replayed(timeout_s=600)  # the earlier rows' views, replayed before the clock
        probes["standby"] = ServerCpu.find(standby.url)
    try:
        with context.Pool(1) as pool:
            before = {k: p.sample_whole() for k, p in probes.items() if p is not None}
            read_url = None if standby is None else standby.url
            result: CatchupResult = pool.apply(
                _measured, (measure, url, schema, events, how), {"read_url": read_url}
            )
            after = {k: p.sample_whole() for k, p in probes.items() if p is not None}
    finally:
        for probe in probes.values():
            if probe is not None:
                probe.close()
    used = {
        k: p.whole_s(before[k], after[k]) / events * 1e6 for k, p in probes.items() if p is not None
    }
    result = replace(
        result,
        read_from="primary" if standby is None else "standby",
        primary_cpu_us_per_event=used.get("primary"),
        standby_cpu_us_per_event=used.get("standby"),
    )
    print(
        f"  {result.system:<14} {result.method:<20} {result.seconds:7.2f} s "
        f"{format_rate(result.events_per_s):>8} events/s {result.client_cpu_us_per_event:6.1f} "
        f"us/event CPU, peak {result.peak_rss_mb:.0f} MB, server "
        f"{_us(result.primary_cpu_us_per_event)} us/event"
        + ("" if standby is None else f", standby {_us(result.standby_cpu_us_per_event)}"),
        file=sys.stderr,
    )
    return result


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _measured(
    measure: Measure,
    url: str,
    schema: str,
    events: int,
    how: object,
    *,
    read_url: str | None,
) -> CatchupResult:
    tune_gc()  # as `eventkit workers` does
    cpu_from = time.process_time()
    result = measure(url, schema, events, how, read_url)
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


def _measure_read(
    url: str, schema: str, events: int, mode: object, read_url: str | None = None
) -> CatchupResult:
    """The follower's read of the whole log (and the mapper's decoding, for
    ``read+decode``), with nothing applied; on ``read_url`` when given."""
    settings = Settings(database_url=url, schema=schema, read_url=read_url)
    recorder = read_recorder(settings) or PostgresEventRecorder(shared_pool(settings)[0], schema)
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
    where = "" if read_url is None else " on standby"
    return _result(EVENTKIT, f"{mode}{where}", events, READ_BATCH, seconds)


def _measure_worker(
    url: str, schema: str, events: int, batch: object, read_url: str | None = None
) -> CatchupResult:
    """A fresh follower of the projection at batch size ``batch``, reading the log on
    ``read_url`` when given (its view and position on ``url``)."""
    assert isinstance(batch, int)
    settings = Settings(database_url=url, schema=schema, read_url=read_url)
    pool, _ = shared_pool(settings)
    where = "" if read_url is None else "s"
    counted = 0
    done = threading.Event()

    def count(report: BatchReport) -> None:
        nonlocal counted
        counted += report.applied + report.parked
        if counted >= events:
            done.set()

    suffix = f"__w{batch}{where}"
    follower = Follower(
        f"{StreamCounts.name}#w{batch}{where}",
        ProjectionApplier(StreamCounts(), schema, mapper=PydanticMapper(), table_suffix=suffix),
        Partition(),
        FollowerOptions(
            url=url,
            recorder=PostgresEventRecorder(pool, schema),
            worker_id=f"bench-catchup-w{batch}{where}",
            batch_size=batch,
            on_batch=count,
            reader=read_recorder(settings),
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
    on = "" if read_url is None else " on standby"
    return _result(EVENTKIT, f"worker (batch {batch:,}){on}", events, batch, seconds)


def _measure_rebuild(
    url: str, schema: str, events: int, _: object = None, read_url: str | None = None
) -> CatchupResult:
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
        "primary us/ev",
        "standby us/ev",
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
            _us(r.primary_cpu_us_per_event),
            _us(r.standby_cpu_us_per_event),
        ]
        for r in results
    ]
    return format_table(headers, rows)

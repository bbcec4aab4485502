"""``eventkit bench append``: ``Application.save()`` throughput and latency, eventkit against
the plain eventsourcing library, in one run against one PostgreSQL server.

Every row saves new aggregates of ``batch`` events each (``batch`` = 1: one ``Created``
event per save) from ``writers`` concurrent writers, for a measuring window after a
warm-up. events/s counts the events of saves completed in the window, divided by the
window; p50/p99 are of each save's latency (``perf_counter`` around ``save()``). Creating
the aggregate's events is part of each writer's loop (a user pays for it too) but not of
the latency.

Each run measures every row once, the rows taking turns; ``--runs N`` (3 for a full run)
repeats that N times and ends with each figure's median and range over the runs, so a burst
of other work on a shared machine spoils one run of a row rather than the row.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from uuid import uuid4

import psycopg

from eventkit.benchmarks.report import (
    format_ms,
    format_rate,
    format_ratio,
    format_table,
    percentile,
    write_json,
)
from eventkit.benchmarks.server_cpu import ServerCpu
from eventkit.benchmarks.systems import (
    EVENTKIT,
    EVENTKIT_GROUP,
    EVENTKIT_KEY,
    EVENTKIT_NOTIFY,
    EVENTSOURCING,
    SYSTEMS,
    create_schemas,
    drop_schemas,
    schema_names,
)
from eventkit.benchmarks.workers import Job, Sample, WorkerPool
from eventkit.infrastructure.database import resolve_database_url
from eventkit.infrastructure.settings import Settings, redact

#: ``threads`` by default: the eventsourcing figures the comparison starts from (1 / 4 / 16
#: writer *threads*, see FACTS.md) were taken that way, and a process with 16 threads is how
#: 16 concurrent writers run on a 2-core machine. ``processes`` used to be the default, on
#: the grounds that the GIL capped threads below what the server could take; once a save's
#: client work fell to ~190 us that stopped being so: in one run, 16 writer threads saved
#: 4,518 events/s and 16 writer processes 3,956, whose CPU time per save rose from ~180 us
#: with 4 processes to ~305 us with 16 (16 interpreters taking turns on 2 cores).
#: Saves of 100 and 1,000 events are CPU-bound in the client and do go faster in processes.
MODES = ("threads", "processes")
MODE_NOTES = {
    "processes": (
        "each writer is its own process (forkserver), so the writers' Python work runs in "
        "parallel; on 2 cores, 16 writer processes spend much of their CPU taking turns"
    ),
    "threads": (
        "all writers are threads of one process (they share one GIL, released while each "
        "waits for the server)"
    ),
}

#: (writers, batch) rows, in the order they are measured and printed.
ROWS = ((1, 1), (4, 1), (16, 1), (1, 100), (4, 100), (1, 1000), (4, 1000))
#: Rows measured for ``eventkit+notify`` too.
NOTIFY_ROWS = ((16, 1),)
#: Rows measured for ``eventkit+key`` too (every save with an idempotency key).
KEY_ROWS = ((1, 1), (16, 1), (1, 100))
#: Rows measured for ``eventkit+group`` too (group commit on; ``eventkit`` has it off).
GROUP_ROWS = ((1, 1), (4, 1), (16, 1))


@dataclass(frozen=True)
class Timing:
    """How long each row warms up and then measures."""

    warmup_s: float
    duration_s: float


QUICK = Timing(warmup_s=0.5, duration_s=1.5)
FULL = Timing(warmup_s=1.0, duration_s=3.0)


@dataclass(frozen=True)
class Case:
    """One row to measure."""

    system: str
    writers: int
    batch: int


@dataclass(frozen=True)
class AppendResult:
    """One measured row, as written to ``--json``."""

    system: str
    writers: int
    batch: int
    mode: str
    duration_s: float
    events: int
    saves: int
    events_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    client_cpu_us_per_event: float | None
    server_cpu_us_per_event: float | None
    ratio_vs_eventsourcing: float | None = None
    suite: str = "append"


def plan() -> list[Case]:
    """The rows of a run; both systems of a row are measured one after the other."""
    cases = []
    for writers, batch in ROWS:
        cases.append(Case(EVENTKIT, writers, batch))
        cases.append(Case(EVENTSOURCING, writers, batch))
        if (writers, batch) in NOTIFY_ROWS:
            cases.append(Case(EVENTKIT_NOTIFY, writers, batch))
        if (writers, batch) in KEY_ROWS:
            cases.append(Case(EVENTKIT_KEY, writers, batch))
        if (writers, batch) in GROUP_ROWS:
            cases.append(Case(EVENTKIT_GROUP, writers, batch))
    return cases


def summarise(
    case: Case, mode: str, timing: Timing, samples: list[Sample], server_cpu_s: float | None
) -> AppendResult:
    """Combine the workers' samples of one row (and the server's CPU time in its window)."""
    latencies_ms = [s * 1000 for sample in samples for s in sample.latencies_s]
    events = sum(sample.events for sample in samples)
    cpu_s = sum(sample.cpu_s for sample in samples)
    return AppendResult(
        system=case.system,
        writers=case.writers,
        batch=case.batch,
        mode=mode,
        duration_s=timing.duration_s,
        events=events,
        saves=len(latencies_ms),
        events_per_s=events / timing.duration_s,
        p50_ms=percentile(latencies_ms, 50) if latencies_ms else None,
        p99_ms=percentile(latencies_ms, 99) if latencies_ms else None,
        client_cpu_us_per_event=cpu_s / events * 1e6 if events else None,
        server_cpu_us_per_event=(
            server_cpu_s / events * 1e6 if events and server_cpu_s is not None else None
        ),
    )


def with_ratios(results: list[AppendResult]) -> list[AppendResult]:
    """Set each eventkit row's events/s as a multiple of eventsourcing's in the same row."""
    baseline = {(r.writers, r.batch): r.events_per_s for r in results if r.system == EVENTSOURCING}
    out = []
    for r in results:
        base = baseline.get((r.writers, r.batch))
        ratio = r.events_per_s / base if r.system != EVENTSOURCING and base else None
        out.append(replace(r, ratio_vs_eventsourcing=ratio))
    return out


def table(results: list[AppendResult]) -> str:
    """The results as a text table."""
    headers = [
        "suite",
        "system",
        "writers",
        "batch",
        "events/s",
        "p50 ms",
        "p99 ms",
        "ek/es",
        "client us/ev",
        "server us/ev",
    ]
    rows = [
        [
            r.suite,
            r.system,
            str(r.writers),
            str(r.batch),
            format_rate(r.events_per_s),
            _optional(format_ms, r.p50_ms),
            _optional(format_ms, r.p99_ms),
            format_ratio(r.ratio_vs_eventsourcing),
            _optional(format_rate, r.client_cpu_us_per_event),
            _optional(format_rate, r.server_cpu_us_per_event),
        ]
        for r in results
    ]
    return format_table(headers, rows)


def _optional(format_value: Callable[[float], str], value: float | None) -> str:
    return "-" if value is None else format_value(value)


def register(benchmarks: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = benchmarks.add_parser(
        "append", help="Application.save() rates and latencies: eventkit vs eventsourcing"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"{QUICK.duration_s:g} s per row instead of {FULL.duration_s:g} s, and one run "
            "(well under a minute in all)"
        ),
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results to FILE")
    parser.add_argument(
        "--systems",
        type=lambda text: tuple(text.split(",")),
        default=SYSTEMS,
        metavar="S[,S...]",
        help=f"measure only these systems' rows (default all: {','.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="threads",
        help="run concurrent writers as threads of one process (default) or as processes",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    timing = QUICK if args.quick else FULL
    mode: str = args.mode
    url = resolve_database_url(Settings.from_env())
    print(_describe_server(url))
    print(textwrap.fill(f"writers: {mode} - {MODE_NOTES[mode]}", width=100))
    print(
        f"each row: {timing.warmup_s:g} s warm-up, then {timing.duration_s:g} s measured, "
        "rows taking turns\n"
    )
    sys.stdout.flush()
    schemas = schema_names(uuid4().hex[:8])
    server_cpu = None
    try:
        envs = create_schemas(url, schemas)
        server_cpu = ServerCpu.find(url)
        most_writers = max(w for w, _ in ROWS)
        with WorkerPool(most_writers if mode == "processes" else 1) as pool:
            results = [
                _measure(pool, case, _jobs(case, envs[case.system], mode, timing), server_cpu)
                for case in plan()
                if case.system in args.systems
            ]
    finally:
        if server_cpu is not None:
            server_cpu.close()
        drop_schemas(url, list(schemas.values()))
    results = with_ratios(results)
    print(table(results))
    print(
        "\nek/es: the row's events/s divided by eventsourcing's in the same row; "
        "client/server us/ev: CPU time per event\nof the writer processes and of the "
        "PostgreSQL server (the backends of this run and the server's own processes;\n"
        "'-' for a remote server)"
    )
    if args.json:
        write_json(args.json, [asdict(r) for r in results])
        print(f"wrote {args.json}")
    print(f"finished in {time.perf_counter() - started:.1f} s")
    return 0


def _measure(
    pool: WorkerPool, case: Case, jobs: list[Job], server_cpu: ServerCpu | None
) -> AppendResult:
    """Run one row's jobs; summarise them with the server's CPU time in the window."""
    job = jobs[0]
    start_at = pool.start(jobs)
    cpu_samples = None
    if server_cpu is not None:
        # Sleep through the warm-up and the window, sampling the server at both ends.
        measure_from = start_at + job.warmup_s
        time.sleep(max(0.0, measure_from - time.time()))
        before = server_cpu.sample()
        time.sleep(max(0.0, measure_from + job.duration_s - time.time()))
        cpu_samples = before, server_cpu.sample()
    samples = pool.results()
    server_cpu_s = None
    pids = {pid for sample in samples for pid in sample.backend_pids}
    if server_cpu is not None and cpu_samples is not None and pids:
        server_cpu_s = server_cpu.used_s(*cpu_samples, pids)
    timing = Timing(job.warmup_s, job.duration_s)
    result = summarise(case, job.mode, timing, samples, server_cpu_s)
    print(
        f"  {case.system:<16} writers={case.writers:<3} batch={case.batch:<5} "
        f"{format_rate(result.events_per_s):>8} events/s",
        file=sys.stderr,
    )
    return result


def _jobs(case: Case, env: dict[str, str], mode: str, timing: Timing) -> list[Job]:
    """One job per writer process, or one job of ``writers`` threads."""
    if mode == "processes":
        return [
            Job(case.system, env, case.batch, 1, mode, timing.warmup_s, timing.duration_s)
            for _ in range(case.writers)
        ]
    return [
        Job(case.system, env, case.batch, case.writers, mode, timing.warmup_s, timing.duration_s)
    ]


def _describe_server(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'), "
            "current_setting('fsync')"
        ).fetchone()
    assert row is not None
    return (
        f"PostgreSQL {row[0]} at {redact(url)} (synchronous_commit={row[1]}, fsync={row[2]})\n"
        f"{os.cpu_count()} CPUs, shared by the writers and the server (load average "
        f"{os.getloadavg()[0]:.1f} as the run starts)"
    )

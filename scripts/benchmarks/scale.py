"""``eventkit bench scale``: one projection shared by 1, 2 and 4 worker processes.

The log is filled first (200,000 events: 100 new streams of 10 events per save), then
vacuumed and analysed. Then, for each number of processes, a fresh copy of the
projection (its own tracking name and tables, 8 partitions by stream) is caught up from
zero by that many ``WorkerGroup`` processes started together; the time runs from the
first lease taken until every partition's recorded position is the head of the log, and
the view is checked (one row per stream, every event counted once).

Then takeover: two processes share the caught-up projection; one is killed with -9 and
the time until the survivor holds every partition is measured, 5 times (a new process
joins between rounds). The same with SIGSTOP (a process that hangs, or a machine cut off:
its session stays open, so only its lease's expiry frees its partitions), 3 times. And
what the idle group costs the database: transactions per second with no new events.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from uuid import uuid4

import psycopg
from psycopg import sql

from eventkit.benchmarks.proj_systems import (
    EVENTKIT,
    StreamCounts,
    create_schema,
    describe_server,
    settle,
)
from eventkit.benchmarks.proj_writers import Load, Writers
from eventkit.benchmarks.report import format_rate, format_table, write_json
from eventkit.benchmarks.systems import drop_schemas
from eventkit.bootstrap import stop_on_signals, tune_gc
from eventkit.infrastructure.database import create_pool, resolve_database_url
from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.partitions import Partition, record_partitions
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.follower import Follower, FollowerOptions
from eventkit.projections.group import Runnable, WorkerGroup

ROOT = Path(__file__).resolve().parents[2]
QUICK_EVENTS = 20_000
FULL_EVENTS = 200_000
EVENTS_PER_STREAM = 10
STREAMS_PER_SAVE = 100
PARTITIONS = 8
PROCESSES = (1, 2, 4)
BATCH = 1000
HEARTBEAT_S = 1.0
LEASE_TTL_S = 5.0


class ScaleError(EventkitError):
    """A run did not finish, or its view is wrong."""


@dataclass(frozen=True)
class ScaleResult:
    suite: str
    measure: str
    processes: int
    partitions: int
    events: int
    seconds: float
    events_per_s: float | None
    max_connections: int | None


def register(benchmarks: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = benchmarks.add_parser(
        "scale", help="catch-up with 1, 2, 4 worker processes; takeover after kill -9"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_EVENTS:,} events, 3 takeover rounds"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results to FILE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    events = QUICK_EVENTS if args.quick else FULL_EVENTS
    kills = 3 if args.quick else 5
    url = resolve_database_url(Settings.from_env())
    print(describe_server(url))
    print(
        f"log: {events:,} events; projection: {PARTITIONS} partitions by stream, batch "
        f"{BATCH}; heartbeat {HEARTBEAT_S} s, lease {LEASE_TTL_S} s\n",
        flush=True,
    )
    schema = f"bench_{uuid4().hex[:8]}_scale"
    results: list[ScaleResult] = []
    try:
        env = create_schema(url, EVENTKIT, schema)
        with Writers(2) as writers:
            shares = [events // 2, events - events // 2]
            writers.start(
                [Load(EVENTKIT, env, s, EVENTS_PER_STREAM, STREAMS_PER_SAVE) for s in shares]
            )
            saved = sum(s.events for s in writers.results(timeout_s=events / 200 + 60))
        if saved != events:
            raise ScaleError(f"the writers saved {saved} events, not {events}")
        settle(url, EVENTKIT, schema)
        for n in PROCESSES:
            results.append(_catch_up(url, schema, events, n))
        results += _takeovers(url, schema, kills)
        results.append(_idle(url, schema))
    finally:
        drop_schemas(url, [schema])
    print()
    print(table(results))
    print(
        "\ncatch-up seconds: from the first lease taken until every partition's position is "
        "the log's head;\ntakeover seconds: from the signal until the survivor holds every "
        "partition (median of the rounds;\nevents_per_s column of idle rows: database "
        "transactions per second of the idle group)"
    )
    if args.json:
        write_json(args.json, [asdict(r) for r in results])
        print(f"wrote {args.json}")
    print(f"finished in {time.perf_counter() - started:.1f} s")
    return 0


def table(results: list[ScaleResult]) -> str:
    return format_table(
        ("suite", "measure", "procs", "partitions", "events", "seconds", "events/s", "conns/proc"),
        [
            (
                r.suite,
                r.measure,
                str(r.processes),
                str(r.partitions),
                f"{r.events:,}" if r.events else "-",
                f"{r.seconds:.2f}",
                "-" if r.events_per_s is None else format_rate(r.events_per_s),
                "-" if r.max_connections is None else str(r.max_connections),
            )
            for r in results
        ],
    )


# -- the worker processes ---------------------------------------------------------------------


def _spawn(url: str, schema: str, name: str, worker_id: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url, "EVENTKIT_SCHEMA": schema}
    return subprocess.Popen(
        [sys.executable, "-m", "eventkit.benchmarks.scale", name, worker_id],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _serve(name: str, worker_id: str) -> None:
    """A worker process: one member of the group running projection copy ``name``."""
    tune_gc()
    settings = Settings.from_env()
    url = resolve_database_url(settings)
    # The pool under the worker's name too, so its connections are counted with it.
    pool = create_pool(url, settings, name=f"eventkit:{worker_id}")
    options = FollowerOptions(
        url=url,
        recorder=PostgresEventRecorder(pool, settings.schema),
        worker_id=worker_id,
        batch_size=BATCH,
        lease_ttl_s=LEASE_TTL_S,
    )
    mapper = PydanticMapper()
    suffix = f"__{name.rsplit('#', 1)[-1]}"

    def make(partition: int, partitions: int) -> Follower:
        applier = ProjectionApplier(
            StreamCounts(), settings.schema, mapper=mapper, table_suffix=suffix
        )
        key = Partition(StreamCounts.partition_key, partitions, partition)
        return Follower(name, applier, key, options)

    group = WorkerGroup(
        [Runnable(name, StreamCounts, make)],
        url=url,
        schema=settings.schema,
        worker_id=worker_id,
        heartbeat_s=HEARTBEAT_S,
        lease_ttl_s=LEASE_TTL_S,
        read_pool_size=settings.pool_max_size,
    )
    group.run(stop_on_signals())


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# -- measurements -------------------------------------------------------------------------------


def _catch_up(url: str, schema: str, events: int, processes: int) -> ScaleResult:
    name = f"{StreamCounts.name}#p{processes}"
    with psycopg.connect(url, autocommit=True) as conn:
        record_partitions(conn, schema, name, PARTITIONS)
        head = _head(conn, schema)
    procs = [_spawn(url, schema, name, f"scale-{processes}-{i}") for i in range(processes)]
    connections = 0
    try:
        deadline = time.monotonic() + events / 200 + 120
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                if time.monotonic() > deadline:
                    raise ScaleError(f"{processes} process(es) did not catch up in time")
                if any(p.poll() is not None for p in procs):
                    raise ScaleError(f"a worker process exited: {[p.poll() for p in procs]}")
                connections = max(connections, _connections(conn, f"scale-{processes}-"))
                done = conn.execute(
                    sql.SQL(
                        "SELECT count(*) FILTER"
                        " (WHERE (transaction_id, notification_id) = (%s, %s)),"
                        " extract(epoch FROM max(updated_at) - (SELECT min(acquired_at) FROM {l}"
                        " WHERE consumer = %s))::float8 FROM {t} WHERE consumer = %s"
                    ).format(
                        l=sql.Identifier(schema, "leases"), t=sql.Identifier(schema, "tracking")
                    ),
                    (head[0], head[1], name, name),
                ).fetchone()
                if done is not None and done[0] == PARTITIONS:
                    seconds = float(done[1])
                    break
                time.sleep(0.05)
            _check_view(conn, schema, f"stream_counts__p{processes}", events)
    finally:
        _stop(procs)
    per_process = -(-connections // processes)
    print(
        f"  {processes} process(es): {events:,} events in {seconds:.2f} s "
        f"({format_rate(events / seconds)} events/s), at most {connections} connections",
        file=sys.stderr,
    )
    return ScaleResult(
        "catch-up",
        "events/s",
        processes,
        PARTITIONS,
        events,
        seconds,
        events / seconds,
        per_process,
    )


def _takeovers(url: str, schema: str, kills: int) -> list[ScaleResult]:
    name = f"{StreamCounts.name}#p1"  # caught up already: takeover of idle partitions
    results = []
    for how, rounds, sig in (("kill -9", kills, signal.SIGKILL), ("SIGSTOP", 3, signal.SIGSTOP)):
        procs = [_spawn(url, schema, name, f"take-{how[-1]}-0")]
        times = []
        try:
            for i in range(rounds):
                newcomer = _spawn(url, schema, name, f"take-{how[-1]}-{i + 1}")
                procs.append(newcomer)
                live = [p for p in procs if p.poll() is None][-2:]
                ids = [f"take-{how[-1]}-{procs.index(p)}" for p in live]
                _wait_for_owners(url, schema, name, set(ids), timeout=30)
                victim, survivor = live[0], ids[1]
                signalled = time.monotonic()
                os.kill(victim.pid, sig)
                _wait_for_owners(url, schema, name, {survivor}, timeout=60)
                times.append(time.monotonic() - signalled)
                if sig == signal.SIGSTOP:
                    victim.send_signal(signal.SIGCONT)
                    victim.terminate()
                victim.wait(30)
                print(f"  {how} round {i + 1}: {times[-1]:.2f} s", file=sys.stderr)
        finally:
            _stop(procs)
        results.append(
            ScaleResult(
                "takeover",
                f"{how} (median of {rounds})",
                2,
                PARTITIONS,
                0,
                statistics.median(times),
                None,
                None,
            )
        )
    return results


def _idle(url: str, schema: str) -> ScaleResult:
    name = f"{StreamCounts.name}#p1"
    procs = [_spawn(url, schema, name, f"idle-{i}") for i in range(2)]
    try:
        _wait_for_owners(url, schema, name, {"idle-0", "idle-1"}, timeout=30)
        time.sleep(2.0)
        with psycopg.connect(url, autocommit=True) as conn:
            before = _transactions(conn)
            time.sleep(10.0)
            after = _transactions(conn)
            connections = _connections(conn, "idle-")
    finally:
        _stop(procs)
    rate = (after - before) / 10.0
    print(f"  idle: {rate:.0f} transactions/s for 2 processes", file=sys.stderr)
    return ScaleResult("idle", "transactions/s", 2, PARTITIONS, 0, 10.0, rate, connections // 2)


def _wait_for_owners(url: str, schema: str, name: str, owners: set[str], timeout: float) -> None:
    """Wait until every partition is leased, by exactly ``owners``."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                sql.SQL(
                    "SELECT owner FROM {} WHERE consumer = %s AND owner IS NOT NULL"
                    " AND expires_at > clock_timestamp()"
                ).format(sql.Identifier(schema, "leases")),
                (name,),
            ).fetchall()
            if len(rows) == PARTITIONS and {r[0] for r in rows} == owners:
                return
            if time.monotonic() > deadline:
                raise ScaleError(f"partitions of {name} not held by {owners}: {rows}")
            time.sleep(0.02)


def _head(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> tuple[int, int]:
    row = conn.execute(
        sql.SQL(
            "SELECT transaction_id::text::bigint, notification_id FROM {} e"
            " ORDER BY e.transaction_id DESC, e.notification_id DESC LIMIT 1"
        ).format(sql.Identifier(schema, "stored_events"))
    ).fetchone()
    assert row is not None
    return int(str(row[0])), int(str(row[1]))


def _connections(conn: psycopg.Connection[tuple[object, ...]], prefix: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
        (f"eventkit:{prefix}%",),
    ).fetchone()
    return int(str(row[0])) if row else 0


def _transactions(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database"
        " WHERE datname = current_database()"
    ).fetchone()
    return int(str(row[0])) if row else 0


def _check_view(
    conn: psycopg.Connection[tuple[object, ...]], schema: str, table_name: str, events: int
) -> None:
    row = conn.execute(
        sql.SQL("SELECT count(*), coalesce(sum(events), 0) FROM {}").format(
            sql.Identifier(schema, table_name)
        )
    ).fetchone()
    assert row is not None
    streams, counted = int(str(row[0])), int(str(row[1]))
    if streams != events // EVENTS_PER_STREAM or counted != events:
        raise ScaleError(f"{table_name}: {streams} streams and {counted} events, not {events}")


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])

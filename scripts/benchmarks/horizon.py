"""``./scripts/bench horizon``: how long a transaction outside the log delays a follower.

For each kind of foreign transaction (one that wrote a row to another table of the same
database, one in another database of the server, a prepared transaction that wrote a row),
in a fresh schema: a writer appends one event every ``--every`` seconds; two followers
tail the log side by side, reading after their position with

- ``xmin``: the plain guard, rows below the xmin of the reader's snapshot (what eventkit's
  followers read with before migration 0009), and
- ``log_horizon``: eventkit's followers' guard, ``log_horizon()`` (rows below the oldest
  transaction that can still write to the log);

each polls as a worker does (2 ms after a read that found rows, doubling to 50 ms while
idle). The foreign transaction is opened after a second and held ``--hold`` seconds (30 by
default), then rolled back. An event's delay is when a follower first read it minus when
its append returned; the table shows, for the events appended while the foreign
transaction was open, the median and the largest delay of each follower.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import conninfo, sql

from eventkit.benchmarks.report import format_ms, format_table, percentile, write_json
from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings

GUARDS = {
    "xmin": "pg_snapshot_xmin(pg_current_snapshot())",
    "log_horizon": "(SELECT {schema}.log_horizon())",
}
KINDS = ("table", "database", "prepared")


@dataclass(frozen=True)
class HorizonResult:
    foreign: str
    guard: str
    hold_s: float
    events: int
    p50_ms: float
    max_ms: float


def register(benchmarks: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = benchmarks.add_parser(
        "horizon", help="how long a transaction outside the log delays a follower"
    )
    parser.add_argument("--hold", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--every", type=float, default=0.05, help="seconds between appends")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    base = Settings.from_env()
    results: list[HorizonResult] = []
    for kind in args.kinds:
        settings = Settings(
            database_url=base.database_url,
            schema=f"bench_horizon_{uuid4().hex[:8]}",
            home=base.home,
        )
        pool, url = shared_pool(settings)
        with pool.connection() as conn:
            row = conn.execute("SELECT current_setting('max_prepared_transactions')").fetchone()
        if kind == "prepared" and (row is None or row[0] == "0"):
            print("max_prepared_transactions is 0 on this server: no prepared transaction")
            continue
        try:
            results += _measure(kind, settings.schema, url, args.hold, args.every)
        finally:
            with pool.connection() as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(settings.schema))
                )
        print(_table(results[-2:]), flush=True)
    print()
    print(_table(results))
    if args.json:
        write_json(args.json, [asdict(r) for r in results])
    return 0


def _measure(
    kind: str, schema: str, url: str, hold_s: float, every_s: float
) -> list[HorizonResult]:
    settings = Settings(database_url=url, schema=schema)
    pool, _ = shared_pool(settings)
    recorder = PostgresEventRecorder(pool, schema)
    appended: dict[int, float] = {}
    seen: dict[str, dict[int, float]] = {guard: {} for guard in GUARDS}
    stop = threading.Event()
    window: list[float] = []

    def write() -> None:
        while not stop.is_set():
            stored = StoredEvent(uuid4(), 1, "Bench.Appended", b"{}")
            [notification_id] = recorder.insert_events([stored])
            appended[notification_id] = time.monotonic()
            stop.wait(every_s)

    def follow(guard: str) -> None:
        statement = sql.SQL(
            "SELECT transaction_id::text::bigint, notification_id FROM {log} e"
            " WHERE (e.transaction_id, e.notification_id) > (%s::text::xid8, %s)"
            " AND e.transaction_id < " + GUARDS[guard] + " ORDER BY e.transaction_id,"
            " e.notification_id LIMIT 1000"
        ).format(log=sql.Identifier(schema, "stored_events"), schema=sql.Identifier(schema))
        after = (0, 0)
        interval = 0.002
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                rows = conn.execute(statement, (str(after[0]), after[1])).fetchall()
                now = time.monotonic()
                for _, notification_id in rows:
                    seen[guard][notification_id] = now
                if rows:
                    after = rows[-1]
                    interval = 0.002
                else:
                    interval = min(interval * 2, 0.05)
                stop.wait(interval)

    threads = [threading.Thread(target=write)] + [
        threading.Thread(target=follow, args=(guard,)) for guard in GUARDS
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        with _foreign(kind, url):
            window.append(time.monotonic())
            time.sleep(hold_s)
            window.append(time.monotonic())
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    opened, closed = window
    during = [i for i, at in appended.items() if opened <= at <= closed]
    results = []
    for guard in GUARDS:
        delays = [seen[guard].get(i, float("inf")) - appended[i] for i in during]
        results.append(
            HorizonResult(
                foreign=kind,
                guard=guard,
                hold_s=hold_s,
                events=len(during),
                p50_ms=percentile(delays, 50) * 1000,
                max_ms=max(delays) * 1000,
            )
        )
    return results


@contextmanager
def _foreign(kind: str, url: str) -> Iterator[None]:
    """A transaction that wrote one row outside the log, open for the block."""
    if kind == "database":
        name = f"bench_horizon_foreign_{uuid4().hex[:8]}"
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            with _writing(conninfo.make_conninfo(url, dbname=name)):
                yield
        finally:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
        return
    with _writing(url, prepare=kind == "prepared"):
        yield


@contextmanager
def _writing(url: str, *, prepare: bool = False) -> Iterator[None]:
    """A transaction that wrote one row and stays open, or is prepared, for the block."""
    with psycopg.connect(url, autocommit=False) as conn:
        if not prepare:
            conn.execute("CREATE TEMPORARY TABLE foreign_work (n integer)")
            conn.execute("INSERT INTO foreign_work VALUES (1)")
            try:
                yield
            finally:
                conn.rollback()
            return
        # A prepared transaction may not touch temporary tables.
        conn.execute("CREATE TABLE IF NOT EXISTS public.bench_horizon_work (n integer)")
        conn.commit()
        conn.execute("INSERT INTO public.bench_horizon_work VALUES (1)")
        gid = f"bench-horizon-{uuid4().hex[:8]}"
        conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        conn.autocommit = True  # the connection is free again; ROLLBACK PREPARED needs that
        try:
            yield
        finally:
            conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


def _table(results: list[HorizonResult]) -> str:
    rows: list[list[Any]] = []
    for r in results:
        delays = [format_ms(r.p50_ms), format_ms(r.max_ms)]
        rows.append([r.foreign, r.guard, f"{r.hold_s:g}", str(r.events), *delays])
    return format_table(["foreign", "guard", "hold s", "events", "p50 ms", "max ms"], rows)

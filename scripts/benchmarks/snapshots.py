"""``./scripts/bench snapshots``: loading an aggregate of 10,000 events with and without
snapshots, eventkit against the plain eventsourcing library, in one run against one server.

Each system gets a fresh schema and one aggregate of ``EVENTS`` events (an account opened,
then noted), saved 100 events at a time by an application that snapshots every 100 events
(eventsourcing's ``snapshotting_intervals``). Then it is loaded, in rounds, three ways:

* ``events``: by an application of the same class without snapshotting: every event is read
  and applied;
* ``snapshot``: the latest snapshot (at the last version), nothing after it;
* ``snapshot+99``: ``version=EVENTS - 1``, the snapshot 100 events back and the 99 events
  after it (the most an interval of 100 ever leaves to replay).

Both systems load with ``repository.get`` (what eventsourcing users call); eventkit also with
its ``Application.find``. A round loads every row once, rows taking turns, so a burst of other
work on a shared machine spoils one round of a row rather than the row; each row shows the
median, fastest and slowest of its rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4

import psycopg
from eventsourcing.application import Application as PlainApplication
from eventsourcing.domain import Aggregate as PlainAggregate
from eventsourcing.domain import event
from psycopg import sql

from eventkit.benchmarks.report import format_ms, format_ratio, format_table, write_json
from eventkit.benchmarks.systems import EVENTKIT, EVENTSOURCING, drop_schemas, eventsourcing_env
from eventkit.domain.application import Application
from eventkit.domain.model import Aggregate
from eventkit.infrastructure.database import resolve_database_url
from eventkit.infrastructure.migrations import migrate
from eventkit.infrastructure.settings import Settings

EVENTS = 10_000
INTERVAL = 100
SAVE_BATCH = 100
FULL_ROUNDS = 7
QUICK_ROUNDS = 3
WAYS = ("events", "snapshot", f"snapshot+{INTERVAL - 1}")
_TEXT = "a note of moderate length, like most event fields"


class LongAccount(Aggregate, type_name="bench.LongAccount"):
    """An eventkit aggregate with a long history (its state declared for snapshots)."""

    name: str
    total: int
    notes: int

    class Opened(Aggregate.Created):
        name: str

    class Noted(Aggregate.Event):
        text: str
        amount: int

    @event(Opened)
    def __init__(self, name: str) -> None:
        self.name = name
        self.total = 0
        self.notes = 0

    @event(Noted)
    def note(self, text: str, amount: int) -> None:
        self.total += amount
        self.notes += 1


class PlainLongAccount(PlainAggregate):
    """The same aggregate on the plain eventsourcing library."""

    class Opened(PlainAggregate.Created):
        name: str

    class Noted(PlainAggregate.Event):
        text: str
        amount: int

    @event(Opened)
    def __init__(self, name: str) -> None:
        self.name = name
        self.total = 0
        self.notes = 0

    @event(Noted)
    def note(self, text: str, amount: int) -> None:
        self.total += amount
        self.notes += 1


class Snapshotting(Application):
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {LongAccount: INTERVAL}


class NotSnapshotting(Application):
    pass


class PlainSnapshotting(PlainApplication[UUID]):
    # eventsourcing names its tables after the application: both read the same ones.
    name = "PlainLong"
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {PlainLongAccount: INTERVAL}


class PlainNotSnapshotting(PlainApplication[UUID]):
    name = "PlainLong"


@dataclass(frozen=True)
class LoadResult:
    """One measured row, as written to ``--json``."""

    system: str
    method: str
    way: str
    events_replayed: int
    median_ms: float
    fastest_ms: float
    slowest_ms: float
    rounds: int
    round_ms: tuple[float, ...]
    ratio_vs_eventsourcing: float | None = None
    suite: str = "snapshots"


@dataclass(frozen=True)
class Row:
    """One way of loading, to be timed in every round."""

    system: str
    method: str
    way: str
    events_replayed: int
    load: Callable[[], Any]


def register(benchmarks: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = benchmarks.add_parser(
        "snapshots",
        help=f"loading an aggregate of {EVENTS:,} events with and without snapshots",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_ROUNDS} rounds instead of {FULL_ROUNDS}",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results to FILE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    rounds = QUICK_ROUNDS if args.quick else FULL_ROUNDS
    url = resolve_database_url(Settings.from_env())
    run_id = uuid4().hex[:8]
    schemas = {EVENTKIT: f"bench_{run_id}_snap_ek", EVENTSOURCING: f"bench_{run_id}_snap_es"}
    apps: list[Any] = []
    try:
        rows = _prepare(url, schemas, apps)
        results = measure(rows, rounds)
    finally:
        for app in apps:
            app.close()
        drop_schemas(url, list(schemas.values()))
    print(table(results))
    print(
        f"\none aggregate of {EVENTS:,} events per system, snapshots every {INTERVAL} events; "
        f"{rounds} rounds, rows taking turns;\nms: median (fastest-slowest) of the rounds; "
        "ek/es: eventsourcing's median divided by eventkit's, same way of loading"
    )
    if args.json:
        write_json(args.json, [asdict(r) for r in results])
        print(f"wrote {args.json}")
    print(f"finished in {time.perf_counter() - started:.1f} s")
    return 0


def _prepare(url: str, schemas: dict[str, str], apps: list[Any]) -> list[Row]:
    """Write each system's aggregate; return the rows that load it."""
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, schemas[EVENTKIT])
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schemas[EVENTSOURCING])))
    ek_env = {
        "PERSISTENCE_MODULE": "eventkit.infrastructure.factory",
        "DATABASE_URL": url,
        "EVENTKIT_SCHEMA": schemas[EVENTKIT],
    }
    es_env = eventsourcing_env(url, schemas[EVENTSOURCING], pool_size=2)
    ek_writer, ek_reader = Snapshotting(env=ek_env), NotSnapshotting(env=ek_env)
    es_writer, es_reader = PlainSnapshotting(env=es_env), PlainNotSnapshotting(env=es_env)
    apps += [ek_writer, ek_reader, es_writer, es_reader]
    ek_id = _write(ek_writer, LongAccount(name="long"))
    es_id = _write(es_writer, PlainLongAccount(name="long"))
    before = EVENTS - 1
    rows = [
        Row(EVENTKIT, "repository.get", WAYS[0], EVENTS, lambda: ek_reader.repository.get(ek_id)),
        Row(EVENTKIT, "repository.get", WAYS[1], 0, lambda: ek_writer.repository.get(ek_id)),
        Row(
            EVENTKIT,
            "repository.get",
            WAYS[2],
            INTERVAL - 1,
            lambda: ek_writer.repository.get(ek_id, version=before),
        ),
        Row(EVENTKIT, "find", WAYS[0], EVENTS, lambda: ek_reader.find(ek_id, LongAccount)),
        Row(EVENTKIT, "find", WAYS[1], 0, lambda: ek_writer.find(ek_id, LongAccount)),
        Row(
            EVENTSOURCING,
            "repository.get",
            WAYS[0],
            EVENTS,
            lambda: es_reader.repository.get(es_id),
        ),
        Row(EVENTSOURCING, "repository.get", WAYS[1], 0, lambda: es_writer.repository.get(es_id)),
        Row(
            EVENTSOURCING,
            "repository.get",
            WAYS[2],
            INTERVAL - 1,
            lambda: es_writer.repository.get(es_id, version=before),
        ),
    ]
    for row in rows:  # every way loads the same state
        loaded = row.load()
        expected = EVENTS - 1 if row.way == WAYS[2] else EVENTS
        if loaded.version != expected or loaded.notes != expected - 1:
            raise AssertionError(
                f"{row.system} {row.method} {row.way}: loaded version {loaded.version} with "
                f"{loaded.notes} notes, expected version {expected}"
            )
    return rows


def _write(app: Any, account: Any) -> UUID:
    """Save ``account`` with ``EVENTS`` events, ``SAVE_BATCH`` at a time."""
    for i in range(1, EVENTS):
        account.note(text=_TEXT, amount=i)
        if (i + 1) % SAVE_BATCH == 0:
            app.save(account)
    app.save(account)
    aggregate_id: UUID = account.id
    return aggregate_id


def measure(rows: list[Row], rounds: int) -> list[LoadResult]:
    """Time every row once per round, rows taking turns."""
    timings: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    for _ in range(rounds):
        for i, row in enumerate(rows):
            started = time.perf_counter()
            row.load()
            timings[i].append((time.perf_counter() - started) * 1000)
    results = [
        LoadResult(
            system=row.system,
            method=row.method,
            way=row.way,
            events_replayed=row.events_replayed,
            median_ms=statistics.median(timings[i]),
            fastest_ms=min(timings[i]),
            slowest_ms=max(timings[i]),
            rounds=rounds,
            round_ms=tuple(timings[i]),
        )
        for i, row in enumerate(rows)
    ]
    baseline = {(r.method, r.way): r.median_ms for r in results if r.system == EVENTSOURCING}
    return [
        LoadResult(
            **{
                **asdict(r),
                "ratio_vs_eventsourcing": (
                    baseline[(r.method, r.way)] / r.median_ms
                    if r.system == EVENTKIT and (r.method, r.way) in baseline
                    else None
                ),
            }
        )
        for r in results
    ]


def table(results: list[LoadResult]) -> str:
    headers = ["suite", "system", "method", "way", "replayed", "ms", "fastest-slowest", "ek/es"]
    rows = [
        [
            r.suite,
            r.system,
            r.method,
            r.way,
            f"{r.events_replayed:,}",
            format_ms(r.median_ms),
            f"{format_ms(r.fastest_ms)}-{format_ms(r.slowest_ms)}",
            format_ratio(r.ratio_vs_eventsourcing),
        ]
        for r in results
    ]
    return format_table(headers, rows)

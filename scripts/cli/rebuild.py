"""``eventkit rebuild NAME`` (zero downtime) and ``eventkit reset NAME --yes`` (blunt)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import psycopg

from eventkit.bootstrap import tune_gc
from eventkit.cli.workers import default_worker_id, select_projections
from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.projection import Projection
from eventkit.projections.rebuild import rebuild, reset
from eventkit.projections.worker import BatchReport


def register(commands: Any) -> None:
    parser = commands.add_parser("rebuild", help="rebuild a projection beside the live one")
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument(
        "--partitions",
        type=int,
        metavar="P",
        help="follow the rebuilt view in P partitions (any number: merge or split)",
    )
    parser.set_defaults(run=_rebuild)
    blunt = commands.add_parser("reset", help="drop a projection's view and position")
    blunt.add_argument("name", metavar="NAME")
    blunt.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    blunt.set_defaults(run=_reset)


class Progress:
    """A progress bar with rate and ETA on a terminal; a plain line every 2 s otherwise."""

    def __init__(self, total: int, stream: Any = sys.stdout) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.done = 0
        self.started = time.monotonic()
        self.last_line = 0.0
        self.is_tty = bool(getattr(stream, "isatty", lambda: False)())

    def __call__(self, report: BatchReport) -> None:
        self.done += report.applied + report.parked
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        eta = max(self.total - self.done, 0) / rate if rate else 0.0
        share = min(self.done / self.total, 1.0)
        text = (
            f"{self.done:,}/{self.total:,} events ({share:.0%}) {rate:,.0f} events/s "
            f"ETA {eta:.0f} s"
        )
        if self.is_tty:
            bar = "#" * int(share * 30)
            self.stream.write(f"\r[{bar:<30}] {text}")
            self.stream.flush()
        elif time.monotonic() - self.last_line >= 2.0:
            self.last_line = time.monotonic()
            print(f"rebuild {report.projection}: {text}", file=self.stream, flush=True)

    def finish(self) -> None:
        if self.is_tty:
            self.stream.write("\n")


def _rebuild(args: argparse.Namespace) -> int:
    tune_gc()
    [projection] = select_projections([args.name])
    run_rebuild(
        projection, Settings.from_env(), batch_size=args.batch_size, partitions=args.partitions
    )
    return 0


def run_rebuild(
    projection: type[Projection],
    settings: Settings,
    *,
    batch_size: int = 5000,
    partitions: int | None = None,
) -> None:
    """Rebuild ``projection`` with a progress bar, and say how it went."""
    pool, url = shared_pool(settings)
    recorder = PostgresEventRecorder(pool, settings.schema)
    with pool.connection() as conn:
        row = conn.execute(
            f'SELECT count(*) FROM "{settings.schema}".stored_events WHERE topic = ANY(%s)',
            (projection.topics(),),
        ).fetchone()
    progress = Progress(int(row[0]) if row else 0)
    result = rebuild(
        projection,
        url=url,
        schema=settings.schema,
        recorder=recorder,
        mapper=PydanticMapper(),
        worker_id=f"rebuild:{default_worker_id()}",
        batch_size=batch_size,
        on_batch=progress,
        partitions=partitions,
    )
    progress.finish()
    rate = (result.applied + result.parked) / result.seconds if result.seconds else 0.0
    print(
        f"rebuilt {result.projection}: {result.applied:,} events applied, {result.parked} parked, "
        f"in {result.seconds:.1f} s ({rate:,.0f} events/s); now live at position {result.position}"
    )


def _reset(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    [projection] = select_projections([args.name])
    if not args.yes:
        answer = input(f"drop the view of {projection.name} and replay it from zero? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("nothing reset")
            return 1
    _, url = shared_pool(settings)
    with psycopg.connect(url, autocommit=True) as conn:
        reset(conn, settings.schema, projection)
    print(f"reset {projection.name}: its workers replay it from the start of the log")
    return 0

"""``eventkit rebuild NAME``: rebuild a projection's view beside the live one, then swap."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from eventkit.bootstrap import tune_gc
from eventkit.cli.common import app_of, count, describe_app, settings_of
from eventkit.infrastructure.errors import ConfigurationError
from eventkit.infrastructure.factory import existing_pool, mapper_for
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.projections.follower import BatchReport
from eventkit.projections.projection import Projection
from eventkit.projections.rebuild import rebuild
from eventkit.runner import default_worker_id


def register(commands: Any, parents: list[argparse.ArgumentParser], app_spec: str | None) -> None:
    parser = commands.add_parser(
        "rebuild",
        parents=parents,
        help="rebuild a projection's view beside the live one",
        description="Rebuild a projection's view into new tables beside the live one, from "
        "where the projection starts, while its workers keep the live view current; then "
        "swap them in one transaction. " + describe_app(app_spec),
    )
    parser.add_argument("name", metavar="NAME", help="the projection")
    parser.add_argument("--batch-size", type=count, default=5000, help="events per batch")
    parser.add_argument(
        "--partitions",
        type=count,
        metavar="P",
        help="follow the rebuilt view in P partitions (any number: merge or split)",
    )
    parser.set_defaults(run=_rebuild)


class Progress:
    """A progress bar with rate and ETA on a terminal; a plain line every 2 s otherwise."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = max(total, 1)
        # sys.stdout when called, not when this module was imported (a test's captured
        # stream, closed since, for the next test that imported it).
        stream = sys.stdout if stream is None else stream
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
            print(f"rebuild {report.consumer}: {text}", file=self.stream, flush=True)

    def finish(self) -> None:
        if self.is_tty:
            self.stream.write("\n")


def _rebuild(args: argparse.Namespace) -> int:
    tune_gc()
    projection = app_of(args).consumer(args.name)
    if not issubclass(projection, Projection):
        raise ConfigurationError(
            f"{args.name} is a reaction, which has no view to rebuild: move it with eventkit reset"
        )
    run_rebuild(
        projection, settings_of(args), batch_size=args.batch_size, partitions=args.partitions
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
    pool, url = existing_pool(settings)
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
        mapper=mapper_for(pool, settings.schema, settings),
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

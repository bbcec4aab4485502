"""``eventkit rebuild NAME``: rebuild a projection's view beside the live one, then swap."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from eventkit.bootstrap import tune_gc
from eventkit.cli.common import app_of, count, describe_app, settings_of
from eventkit.cli.progress import Completion, Pacer, progress_bar
from eventkit.infrastructure.errors import ConfigurationError
from eventkit.infrastructure.factory import existing_pool, mapper_for, read_recorder
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.projections.follower import BatchReport
from eventkit.projections.projection import Projection
from eventkit.projections.rebuild import REBUILD_SUFFIX, rebuild
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
    parser.add_argument(
        "--read-url",
        metavar="URL",
        help="read the log for the catch-up from this streaming replica of the database "
        "(default: EVENTKIT_READ_URL, else the database itself); the last stretch, under "
        "the swap's locks, is read from the database",
    )
    parser.set_defaults(run=_rebuild)


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
    total = int(row[0]) if row else 0
    label = f"rebuild {projection.name}"
    started = time.monotonic()
    done = 0
    # Off a terminal (a CI log, a file) no bar: a plain line every 2 s, then every 10 s.
    pacer = Pacer(2.0, 10.0, 10) if not sys.stdout.isatty() else None

    with progress_bar(label, total, "events") as advance:

        def on_batch(report: BatchReport) -> None:
            nonlocal done
            done += report.applied + report.parked
            advance(done)
            if pacer is not None and pacer.is_due():
                completion = Completion(done, total, time.monotonic() - started)
                print(f"{label}: {done:,}/{total:,} events, {completion.describe('events')}")

        try:
            result = rebuild(
                projection,
                url=url,
                schema=settings.schema,
                recorder=recorder,
                mapper=mapper_for(pool, settings.schema, settings),
                worker_id=f"rebuild:{default_worker_id()}",
                batch_size=batch_size,
                on_batch=on_batch,
                partitions=partitions,
                reader=read_recorder(settings),
            )
        except KeyboardInterrupt:
            print(
                f"eventkit: {label} interrupted: nothing was swapped, and its copy "
                f"({', '.join(t.name + REBUILD_SUFFIX for t in projection.tables)}) and its "
                "position were dropped; the live view is untouched",
                file=sys.stderr,
            )
            raise
    rate = (result.applied + result.parked) / result.seconds if result.seconds else 0.0
    print(
        f"rebuilt {result.projection}: {result.applied:,} events applied, {result.parked} parked, "
        f"in {result.seconds:.1f} s ({rate:,.0f} events/s); now live at position {result.position}"
    )

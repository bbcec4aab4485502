"""``eventkit audit NAME``: prove that a projection or reaction has applied every committed
event of its types up to its position, exactly once, in every partition."""

from __future__ import annotations

import argparse
import time
from typing import Any

from eventkit.cli.common import app_of, describe_app, settings_of
from eventkit.infrastructure.audit import audit
from eventkit.infrastructure.factory import existing_pool
from eventkit.infrastructure.partitions import recorded_partitions


def register(commands: Any, parents: list[argparse.ArgumentParser], app_spec: str | None) -> None:
    parser = commands.add_parser(
        "audit",
        parents=parents,
        help="prove that a projection or reaction applied every event up to its position "
        "exactly once, or name the events it missed or applied twice",
        description="Recompute, from the log, the count and checksum of the events a "
        "projection or reaction should have applied in each partition (its event types, up "
        "to its position, less dead letters not retried) and compare them with the fold its "
        "batches recorded with their positions. Exits 1 and names the events when they "
        "differ. " + describe_app(app_spec),
    )
    parser.add_argument("name", metavar="NAME", help="the projection or reaction")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    consumer = app_of(args).consumer(args.name)
    settings = settings_of(args)
    pool, _ = existing_pool(settings)
    started = time.perf_counter()
    with pool.connection() as conn:
        partitions = recorded_partitions(conn, settings.schema).get(
            consumer.name, consumer.partitions
        )
        results = audit(
            conn,
            settings.schema,
            consumer.name,
            consumer.topics(),
            key=consumer.partition_key,
            partitions=partitions,
        )
    for result in results:
        print(result.describe())
    events = sum(r.expected.count for r in results)
    incomplete = [r for r in results if not r.complete]
    print(
        f"audited {events:,} event(s) in {len(results)} partition(s) in "
        f"{time.perf_counter() - started:.2f} s: "
        + ("complete" if not incomplete else f"{len(incomplete)} partition(s) INCOMPLETE")
    )
    return 1 if incomplete else 0

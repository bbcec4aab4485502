"""``eventkit partitions NAME [--set P]``: show or change a consumer's partitions."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from eventkit.cli.common import add_json, app_of, count, describe_app, print_json, settings_of
from eventkit.cli.rebuild import run_rebuild
from eventkit.infrastructure.factory import existing_pool
from eventkit.projections.partitioning import split
from eventkit.projections.projection import Projection
from eventkit.projections.status import partition_status


def register(commands: Any, parents: list[argparse.ArgumentParser], app_spec: str | None) -> None:
    parser = commands.add_parser(
        "partitions",
        parents=parents,
        help="show a projection's or reaction's partitions, or change their number",
        description="Show a projection's or reaction's partitions (position, owner, lease, "
        "lag of each), or change their number. " + describe_app(app_spec),
    )
    parser.add_argument("name", metavar="NAME", help="the projection or reaction")
    parser.add_argument(
        "--set",
        dest="partitions",
        type=count,
        metavar="P",
        help="split online into P partitions (P a multiple of the current number), or "
        "else rebuild into P beside the live view with zero downtime",
    )
    add_json(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    cls = app_of(args).consumer(args.name)
    pool, _ = existing_pool(settings)
    if args.partitions is not None:
        with pool.connection() as conn:
            current = partition_status(conn, settings.schema, cls).partitions
        if args.partitions % current == 0:
            with pool.connection() as conn:
                done = split(conn, settings.schema, args.name, cls.partitions, args.partitions)
            print(
                f"{args.name}: {done.before} -> {done.after} partitions (online split; each new "
                "partition starts where its parent was)"
            )
        elif issubclass(cls, Projection):
            print(
                f"{args.name}: {current} -> {args.partitions} partitions is not a split: "
                "rebuilding beside the live view"
            )
            run_rebuild(cls, settings, partitions=args.partitions)
        else:
            print(
                f"reaction {args.name}: {current} -> {args.partitions} partitions is not a "
                f"split; set a multiple of {current} (a reaction is never rebuilt: that would "
                "re-fire its side effects)"
            )
            return 1
    with pool.connection() as conn:
        status = partition_status(conn, settings.schema, cls)
    if args.json:
        print_json(asdict(status))
        return 0
    print(status.table())
    return 0

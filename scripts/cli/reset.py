"""``eventkit reset NAME --to-...``: move a projection or reaction, every partition, to the
origin, the head, a position or a time. A dry run unless ``--execute`` is given."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from eventkit.cli.common import app_of, describe_app, position, settings_of
from eventkit.infrastructure.errors import UsageError
from eventkit.infrastructure.factory import existing_pool
from eventkit.infrastructure.log import Position, StartFrom
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.projections import moving


def register(commands: Any, parents: list[argparse.ArgumentParser], app_spec: str | None) -> None:
    parser = commands.add_parser(
        "reset",
        parents=parents,
        help="move a projection or reaction (every partition) to the origin, the head, a "
        "position or a time",
        description="Move a projection or reaction, every partition at once, like "
        "kafka-consumer-groups --reset-offsets: prints each partition's position before and "
        "after and how many of its events lie between, and changes nothing unless --execute "
        "is given. A projection moved to the origin has its view emptied (stop its workers "
        "first); a reaction moved back sends its messages again, and the ledger runs only "
        "those never executed. " + describe_app(app_spec),
    )
    parser.add_argument("name", metavar="NAME", help="the projection or reaction")
    to = parser.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-origin", action="store_true", help="the start of the log")
    to.add_argument("--to-head", action="store_true", help="after the last event (now)")
    to.add_argument(
        "--to-position",
        type=position,
        metavar="TX/ID",
        help="after the event at this position (TX/ID, each part within 0..2^63-1)",
    )
    to.add_argument(
        "--to-datetime",
        metavar="TIME",
        help="before the first event recorded at or after TIME (ISO 8601 with its offset)",
    )
    parser.add_argument("--execute", action="store_true", help="move (default: a dry run)")
    add_follow(parser)
    parser.set_defaults(run=_run)


def add_follow(parser: argparse.ArgumentParser) -> None:
    """``--follow``: after the move, show the running workers catching up."""
    parser.add_argument(
        "--follow",
        action="store_true",
        help="after the move, show a progress bar (events, rate, ETA) while the running "
        "workers catch up, until the lag is 0 or Ctrl-C; it never starts workers (run "
        "eventkit workers), and says so when none runs NAME",
    )


def target(args: argparse.Namespace) -> StartFrom:
    """Where the flags say to move to."""
    if args.to_origin:
        return "origin"
    if args.to_head:
        return "head"
    if args.to_position is not None:
        to: Position = args.to_position
        return to
    try:
        moment = datetime.fromisoformat(args.to_datetime)
    except ValueError:
        raise UsageError(
            f"--to-datetime {args.to_datetime!r} is not an ISO 8601 time with its offset "
            "(e.g. 2026-12-03T10:00:00+00:00)"
        ) from None
    if moment.tzinfo is None:
        raise UsageError(f"--to-datetime {args.to_datetime}: give the time's offset (e.g. +00:00)")
    return moment


def move(args: argparse.Namespace, start: StartFrom, *, execute: bool) -> int:
    """Print the move of ``args.name`` to ``start``, and carry it out when ``execute``;
    then, with ``--follow``, show its workers catching up."""
    consumer = app_of(args).consumer(args.name)
    settings = settings_of(args)
    pool, _ = existing_pool(settings)
    recorder = PostgresEventRecorder(pool, settings.schema)
    with pool.connection() as conn:
        plan = moving.plan(conn, settings.schema, recorder, consumer, start)
        print(plan.describe())
        if not execute:
            print("dry run: nothing moved; add --execute to move")
            return 0
        moving.execute(conn, settings.schema, consumer, plan)
        print(
            f"moved {plan.kind} {plan.consumer}: its workers follow from the new position at "
            "their next heartbeat",
            flush=True,
        )
    if not getattr(args, "follow", False):
        return 0
    from eventkit.cli.follow import follow

    return follow(pool, settings.schema, consumer)


def _run(args: argparse.Namespace) -> int:
    return move(args, target(args), execute=args.execute)

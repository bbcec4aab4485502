"""``eventkit reactions replay NAME --from POSITION``: send a reaction's messages again, every
partition; ``eventkit reset NAME --to-position`` with the position before ``POSITION``."""

from __future__ import annotations

import argparse
from typing import Any

from eventkit.cli.common import app_of, confirm, describe_app
from eventkit.cli.reset import add_follow, move
from eventkit.infrastructure.errors import ConfigurationError, UsageError
from eventkit.infrastructure.log import Position, StartFrom
from eventkit.projections.reaction import Reaction


def register(commands: Any, parents: list[argparse.ArgumentParser], app_spec: str | None) -> None:
    parser = commands.add_parser(
        "reactions", parents=parents, help="reactions: send messages again from a position"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    replay = actions.add_parser(
        "replay",
        parents=parents,
        help="send NAME's messages again for every event from POSITION on (every partition); "
        "the ledger lets only messages never executed run",
        description="Move a reaction back (every partition) so that it sends the messages "
        "of every event from POSITION on again; the idempotency ledger lets only those "
        "never executed run. " + describe_app(app_spec),
    )
    replay.add_argument("name", metavar="NAME", help="the reaction")
    replay.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="POSITION",
        help="TRANSACTION_ID/NOTIFICATION_ID of the first event to send again, or 0 for all",
    )
    replay.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_follow(replay)
    replay.set_defaults(run=_replay)


def replay_from(start: str) -> StartFrom:
    """Where the follower goes so that it reads ``start`` next."""
    if start.strip() == "0":
        return "origin"
    try:
        first = Position.parse(start)
    except ValueError as e:
        raise UsageError(f"--from: {e}") from None
    if first.notification_id < 1:
        raise UsageError(f"--from: position {start} names no event")
    return Position(first.transaction_id, first.notification_id - 1)


def _replay(args: argparse.Namespace) -> int:
    consumer = app_of(args).consumer(args.name)
    if not issubclass(consumer, Reaction):
        raise ConfigurationError(
            f"{args.name} is a projection: replay it with eventkit rebuild, or move it with "
            "eventkit reset"
        )
    start = replay_from(args.start)
    if not args.yes:
        move(args, start, execute=False)
        if not confirm("send these messages again?", yes=False):
            print("nothing replayed")
            return 1
    return move(args, start, execute=True)

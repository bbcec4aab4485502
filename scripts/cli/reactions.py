"""``eventkit reactions replay``: send a reaction's messages again from a position."""

from __future__ import annotations

import argparse
from typing import Any

from eventkit.infrastructure.errors import ConfigurationError
from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.shop.reactions import REACTION_TYPES


def register(commands: Any) -> None:
    parser = commands.add_parser("reactions", help="reactions: replay from a position")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    replay = actions.add_parser(
        "replay",
        help="send NAME's messages again for every event from POSITION on; the ledger lets "
        "only messages never executed run",
    )
    replay.add_argument("name", metavar="NAME", help=f"one of {', '.join(REACTION_TYPES)}")
    replay.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="POSITION",
        help="TRANSACTION_ID/NOTIFICATION_ID of the first event to send again, or 0 for all",
    )
    replay.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    replay.set_defaults(run=_replay)


def replay_from(start: str) -> Position:
    """The tracking position that makes the follower read ``start`` next."""
    if start.strip() == "0":
        return Position.ORIGIN
    first = Position.parse(start)
    if first.notification_id < 1:
        raise ConfigurationError(f"position {start} names no event")
    return Position(first.transaction_id, first.notification_id - 1)


def replay(pool: Any, schema: str, reaction: str, position: Position) -> None:
    """Move ``reaction``'s follower to ``position``: it sends the later events' messages
    again, and the ledger skips those that were executed."""
    with pool.connection() as conn, conn.transaction():
        Tracking(schema).set(conn, reaction, position)


def _replay(args: argparse.Namespace) -> int:
    if args.name not in REACTION_TYPES:
        raise ConfigurationError(
            f"unknown reaction {args.name!r}; known: {', '.join(REACTION_TYPES)}"
        )
    try:
        position = replay_from(args.start)
    except ValueError as e:
        raise ConfigurationError(str(e)) from None
    settings = Settings.from_env()
    pool, _ = shared_pool(settings)
    tracking = Tracking(settings.schema)
    with pool.connection() as conn:
        current = tracking.position(conn, args.name)
    if not args.yes:
        answer = input(
            f"move reaction {args.name} from {current} back to {position} and send its "
            "messages again (executed ones are skipped by the ledger)? [y/N] "
        )
        if answer.strip().lower() not in {"y", "yes"}:
            print("nothing replayed")
            return 1
    replay(pool, settings.schema, args.name, position)
    print(
        f"reaction {args.name}: follower moved from {current} to {position}; a running "
        "worker picks it up at its next batch"
    )
    return 0

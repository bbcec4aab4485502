"""The ``eventkit`` command: one sub-command per operator task."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from eventkit.cli import db, dlq, logs, partitions, reactions, rebuild, status, workers
from eventkit.infrastructure.errors import EventkitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventkit",
        description="Event sourcing on PostgreSQL: operator commands.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text or as JSON objects (default %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db.register(commands)
    workers.register(commands)
    status.register(commands)
    dlq.register(commands)
    rebuild.register(commands)
    reactions.register(commands)
    partitions.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    try:
        result: int = args.run(args)
    except EventkitError as e:
        print(f"eventkit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())

"""The ``eventkit`` command: one sub-command per operator task.

Only the chosen command's module is imported (``eventkit --help`` imports none of them, nor
psycopg, eventsourcing or the application), so asking for help costs little. Global options
(``--app``, ``-v``, ``--log-format``) may stand before or after the command's name.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

#: Each command: the module that registers it, and its one-line help.
COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("eventkit.cli.db", "the embedded PostgreSQL server and the schema's migrations"),
    "workers": (
        "eventkit.cli.workers",
        "run the application's projections and reactions until SIGTERM or Ctrl-C",
    ),
    "exporter": (
        "eventkit.cli.exporter",
        "serve every consumer's lag and queues, read from the database, to Prometheus",
    ),
    "status": (
        "eventkit.cli.status",
        "where each projection and reaction is, its lag, its messages",
    ),
    "dlq": ("eventkit.cli.dlq", "dead letters: list, show, retry, discard"),
    "rebuild": ("eventkit.cli.rebuild", "rebuild a projection's view beside the live one"),
    "reset": (
        "eventkit.cli.reset",
        "move a projection or reaction (every partition) to the origin, the head, a position "
        "or a time",
    ),
    "reactions": ("eventkit.cli.reactions", "reactions: send messages again from a position"),
    "partitions": ("eventkit.cli.partitions", "a projection's or reaction's partitions"),
    "audit": (
        "eventkit.cli.audit",
        "prove a projection or reaction applied every event exactly once, or name those it did not",
    ),
    "forget": (
        "eventkit.cli.forget",
        "crypto-shred data subjects: their personal data can never be read again",
    ),
}


def _version() -> str:
    try:
        return version("eventkit")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def global_options(*, suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name. On the commands'
    parsers their defaults are suppressed, so a value given before the name stands."""
    parser = argparse.ArgumentParser(add_help=False)
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        default=default,
        help="the application (an eventkit.App) to run; default: EVENTKIT_APP, else "
        "[tool.eventkit] app in pyproject.toml",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="log at DEBUG level",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=argparse.SUPPRESS if suppress else "text",
        help="log lines as text or as JSON objects (default text)",
    )
    return parser


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser, with the full arguments of the command named in ``argv`` (the others
    are listed by name and help only)."""
    parser = argparse.ArgumentParser(
        prog="eventkit",
        description="Event sourcing on PostgreSQL: operator commands for an application's "
        "projections and reactions.",
        parents=[global_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"eventkit {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if a in COMMANDS), None)
    common = global_options(suppress=True)
    app_spec = global_options(suppress=False).parse_known_args(argv)[0].app
    for name, (module, text) in COMMANDS.items():
        if name == chosen:
            importlib.import_module(module).register(commands, [common], app_spec)
        else:
            commands.add_parser(name, help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    import logging

    from eventkit.cli import logs
    from eventkit.infrastructure.errors import EventkitError

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

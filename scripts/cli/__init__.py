"""The ``eventkit`` command: one sub-command per operator task.

Only the chosen command's module is imported (``eventkit --help`` imports none of them, nor
psycopg, eventsourcing or the application), so asking for help costs little. Global options
(``--app``, ``--database-url``, ``--schema``, ``-v``, ``--log-format``) may stand before or
after the command's name.

The contract for scripts (docs/operations.md, "The command line"): results on standard
output, errors on standard error in one line, and the exit code says which:
:data:`EXIT_OK`, :data:`EXIT_ERROR`, :data:`EXIT_USAGE` or :data:`EXIT_UNHEALTHY`.
argparse is kept, not click or typer: neither is a dependency (nor installed here), the
contract needs only a parser whose errors are one line (:class:`Parser`) and global options
shared by every command's parser, and the lazy parser (only the chosen command's module is
imported) keeps ``eventkit --help`` at 0.09-0.12 s of CPU (``/usr/bin/time -f "%U %S"
eventkit --help``), under its budget of 0.3 s.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

#: The command did what it was asked.
EXIT_OK = 0
#: The command failed: the database refused or is out of reach, a name is unknown, a dead
#: letter does not exist... (one line on standard error says why).
EXIT_ERROR = 1
#: The command line or a setting is not valid (an unknown flag, a number out of range, a
#: system schema, a prompt with no terminal to answer it and no ``--yes``).
EXIT_USAGE = 2
#: ``eventkit status --check`` (and ``eventkit db status``): something is not healthy.
EXIT_UNHEALTHY = 3
#: Ctrl-C.
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line on standard error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    parser = Parser(add_help=False)
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        default=default,
        help="the application (an eventkit.App) to run; default: EVENTKIT_APP, else "
        "[tool.eventkit] app in pyproject.toml",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        default=default,
        help="the PostgreSQL server (a URL or keyword DSN); default: DATABASE_URL, else the "
        "embedded server",
    )
    parser.add_argument(
        "--schema",
        metavar="NAME",
        default=default,
        help="eventkit's schema on it; default: EVENTKIT_SCHEMA, else eventkit",
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
    parser = Parser(
        prog="eventkit",
        description="Event sourcing on PostgreSQL: operator commands for an application's "
        "projections and reactions.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage (a flag, a value or a setting refused), "
        "3 unhealthy (status --check). Global options go before or after the command.",
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
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    import logging

    from eventkit.cli import logs
    from eventkit.infrastructure.errors import EventkitError, UsageError
    from eventkit.infrastructure.settings import redact

    try:
        logs.configure(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
        result: int = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, while we can still handle it
    except UsageError as e:
        _error(redact(str(e)))
        return EXIT_USAGE
    except EventkitError as e:
        _error(redact(str(e)))
        return EXIT_ERROR
    except BrokenPipeError:  # the reader went away (`eventkit status --json | head`)
        _silence_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return result


def _error(message: str) -> None:
    """``eventkit: error: MESSAGE`` on standard error, on one line."""
    print("eventkit: error: " + " ".join(message.split()), file=sys.stderr)


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that nothing is written (nor a BrokenPipeError
    reported) when Python flushes it at exit."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout is not a real file
        pass


if __name__ == "__main__":
    sys.exit(main())

"""What every command shares: the loaded application, the settings, the checks of numeric
arguments, confirmation prompts and JSON output."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from eventkit.infrastructure.errors import EventkitError, UsageError
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.settings import Settings
from eventkit.projections.app import App


class CommandFailed(EventkitError):
    """The command could not do what it was asked (no such dead letter, nothing matched):
    ``eventkit: error: ...`` on standard error, exit 1."""


@functools.cache
def _app(spec: str | None) -> App:
    from eventkit.loading import load_app

    return load_app(spec)


def app_of(args: argparse.Namespace) -> App:
    """The application the command runs on (``--app``, ``EVENTKIT_APP`` or pyproject.toml)."""
    return _app(getattr(args, "app", None))


def describe_app(spec: str | None) -> str:
    """One sentence naming the application's consumers, for a command's help; empty when
    no application loads (the command itself then says why)."""
    try:
        return _app(spec).describe().capitalize() + "."
    except EventkitError:
        return ""


def settings_of(args: argparse.Namespace) -> Settings:
    """eventkit's settings for the command: the environment's, with the global flags
    ``--database-url`` and ``--schema`` over ``DATABASE_URL`` and ``EVENTKIT_SCHEMA``, and
    a command's ``--read-url`` over ``EVENTKIT_READ_URL``."""
    import os

    overrides = {
        name: value
        for name, value in (
            ("DATABASE_URL", getattr(args, "database_url", None)),
            ("EVENTKIT_SCHEMA", getattr(args, "schema", None)),
            ("EVENTKIT_READ_URL", getattr(args, "read_url", None)),
        )
        if value is not None
    }
    return Settings.from_env({**os.environ, **overrides} if overrides else None)


def confirm(question: str, *, yes: bool) -> bool:
    """Whether the operator agrees (always, with ``--yes``). With no terminal to ask on,
    refuse with a usage error that names ``--yes`` rather than read an answer nobody gave."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"cannot ask {question!r}: standard input is not a terminal; add --yes")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in {"y", "yes"}


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON (``--json`` of every listing)."""
    print(json.dumps(data, indent=2, default=str))


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for machines")


def _checked(
    convert: Callable[[str], Any], accept: Callable[[Any], bool], wanted: str
) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {wanted}")
        return value

    check.__name__ = wanted  # argparse names the type in some messages
    return check


#: argparse types that refuse, at parse time and in one line, what no command can use.
count = _checked(int, lambda v: v >= 1, "a whole number >= 1")
seconds = _checked(float, lambda v: 0 < v < float("inf"), "a number of seconds > 0")
port = _checked(int, lambda v: 1 <= v <= 65535, "a TCP port within 1..65535")


def position(text: str) -> Position:
    """An argparse type: a log position ``TRANSACTION_ID/NOTIFICATION_ID``, each part
    within 0..2^63-1."""
    try:
        return Position.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

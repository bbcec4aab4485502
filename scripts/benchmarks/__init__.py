"""``eventkit bench``: benchmarks of eventkit against the plain eventsourcing library."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser("bench", help="run a benchmark (never part of the tests)")
    parser.add_subparsers(dest="suite", required=True, metavar="SUITE")

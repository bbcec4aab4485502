"""``./scripts/bench``: benchmarks of eventkit against the plain eventsourcing library.

Benchmarks are never part of the tests: they measure, print a table, and optionally write
the rows to a JSON file (``--json FILE``) for the docs.

* ``append``: ``Application.save()`` throughput and latency (:mod:`.append`).
* ``payload``: an event payload in a ``bytea``, ``json`` or ``jsonb`` column (:mod:`.payload`).
* ``catchup``: a projection processing an existing log from zero (:mod:`.catchup`).
* ``live``: projection latency under writers at a fixed offered rate (:mod:`.live`).
* ``reactions``: reactions/s and latency, PostgreSQL broker and RabbitMQ (:mod:`.reactions`).
* ``horizon``: how long a transaction outside the log delays a follower (:mod:`.horizon`).
* ``audit``: the completeness audit on 1,000,000 events, and the fold's cost per batch
  (:mod:`.audit`).
* ``snapshots``: loading an aggregate of 10,000 events with and without snapshots
  (:mod:`.snapshots`).

Every suite takes ``--runs N`` (default 3, 1 with ``--quick``) and ends with the median and
the range of each figure over its runs (:mod:`.spread`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from eventkit.benchmarks import (
    append,
    audit,
    catchup,
    horizon,
    live,
    payload,
    reactions,
    scale,
    snapshots,
    spread,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./scripts/bench", description="Run a benchmark (never part of the tests)."
    )
    suites = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    append.register(suites)
    payload.register(suites)
    catchup.register(suites)
    live.register(suites)
    reactions.register(suites)
    horizon.register(suites)
    scale.register(suites)
    snapshots.register(suites)
    audit.register(suites)
    for suite in suites.choices.values():
        suite.add_argument(
            "--runs",
            type=int,
            metavar="N",
            help=(
                "run the suite N times and print each figure's median (min - max); "
                "default 3, or 1 with --quick; --json keeps every run's rows"
            ),
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``./scripts/bench SUITE ...``: run one benchmark suite."""
    from eventkit.cli import logs

    args = build_parser().parse_args(argv)
    logs.configure(logging.INFO, "text")
    try:
        result: int = spread.run_suite(args, args.run)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())

"""``eventkit bench``: benchmarks of eventkit against the plain eventsourcing library.

Benchmarks are never part of the tests: they measure, print a table, and optionally write
the rows to a JSON file (``--json FILE``) for the docs.

* ``append``: ``Application.save()`` throughput and latency (:mod:`.append`).
* ``payload``: an event payload in a ``bytea``, ``json`` or ``jsonb`` column (:mod:`.payload`).
* ``catchup``: a projection processing an existing log from zero (:mod:`.catchup`).
* ``live``: projection latency under writers at a fixed offered rate (:mod:`.live`).
* ``reactions``: reactions/s and latency, PostgreSQL broker and RabbitMQ (:mod:`.reactions`).
"""

from __future__ import annotations

from typing import Any

from scripts.benchmarks import append, catchup, live, payload, reactions, scale


def register(commands: Any) -> None:
    parser = commands.add_parser("bench", help="run a benchmark (never part of the tests)")
    suites = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    append.register(suites)
    payload.register(suites)
    catchup.register(suites)
    live.register(suites)
    reactions.register(suites)
    scale.register(suites)

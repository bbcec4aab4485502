"""``eventkit status``: per projection, its position, the log's head, lag, state, dead letters."""

from __future__ import annotations

import argparse
import json
from typing import Any

from infrastructure.factory import shared_pool
from infrastructure.settings import Settings
from projections.status import ProjectionStatus, projection_status
from scripts.workers import select_projections


def register(commands: Any) -> None:
    parser = commands.add_parser("status", help="where each projection is, and its lag")
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(run=_run)


def render(rows: list[ProjectionStatus]) -> str:
    header = ("projection", "state", "position", "head", "lag", "lag s", "dead", "worker")
    lines = [header] + [
        (
            r.projection,
            r.state + (f" ({r.detail})" if r.detail and r.state != "running" else ""),
            r.position,
            r.head or "-",
            str(r.lag_events),
            f"{r.lag_seconds:.1f}",
            str(r.dead_letters),
            r.worker_id or "-",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    pool, _ = shared_pool(settings)
    rows = projection_status(pool, settings.schema, select_projections(args.names))
    if args.json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
    else:
        print(render(rows))
    return 0

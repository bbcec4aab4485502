"""``eventkit status``: per projection, its position, the log's head, lag, state, dead letters."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from eventkit.cli.common import app_of, describe_app, settings_of
from eventkit.infrastructure.broker import BrokerKind, broker_kind
from eventkit.infrastructure.factory import existing_pool
from eventkit.projections.status import (
    ConsumerStatus,
    ReactionStatus,
    consumer_status,
    members,
    partition_status,
    reaction_status,
    render_members,
    server_warnings,
)


def register(commands: Any, parents: list[argparse.ArgumentParser], app_spec: str | None) -> None:
    parser = commands.add_parser(
        "status",
        parents=parents,
        help="where each projection and reaction is, its lag, its messages",
        description="Where each projection and reaction of the application is: position, "
        "lag, state, dead letters; reactions' messages; partitions; worker processes. "
        + describe_app(app_spec),
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="projections and reactions (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=float,
        metavar="SECONDS",
        help="refresh in place every SECONDS (default 2) until Ctrl-C",
    )
    parser.add_argument(
        "--times", type=int, metavar="N", help="with --watch: stop after N refreshes"
    )
    parser.set_defaults(run=_run)


def render(rows: list[ConsumerStatus]) -> str:
    header = ("projection", "state", "position", "head", "lag", "lag s", "dead", "worker")
    lines = [header] + [
        (
            r.consumer,
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


def render_reactions(rows: list[ReactionStatus]) -> str:
    header = (
        "reaction",
        "state",
        "position",
        "lag",
        "lag s",
        "queued",
        "in flight",
        "retrying",
        "oldest s",
        "executed",
        "dead",
    )

    def n(value: int | None) -> str:
        return "-" if value is None else str(value)

    lines = [header] + [
        (
            r.reaction,
            r.state,
            r.position,
            str(r.lag_events),
            f"{r.lag_seconds:.1f}",
            str(r.queued),
            n(r.in_flight),
            n(r.retrying),
            f"{r.oldest_age_s:.1f}",
            str(r.executed),
            str(r.dead_letters),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _run(args: argparse.Namespace) -> int:
    if args.watch is None:
        print(_report(args))
        return 0
    terminal = sys.stdout.isatty()
    shown = 0
    try:
        while args.times is None or shown < args.times:
            report = _report(args)
            stamp = time.strftime("%H:%M:%S")
            if terminal:  # home the cursor and clear the screen: refresh in place
                print(f"\x1b[H\x1b[2J{stamp}  eventkit status (every {args.watch:g} s)\n")
            else:
                print(f"-- {stamp}")
            print(report, flush=True)
            shown += 1
            if args.times is None or shown < args.times:
                time.sleep(args.watch)
    except KeyboardInterrupt:
        pass
    return 0


def _report(args: argparse.Namespace) -> str:
    settings = settings_of(args)
    projections, reaction_types = app_of(args).select(args.names)
    pool, _ = existing_pool(settings)
    rows = consumer_status(pool, settings.schema, projections) if projections else []
    reactions = reaction_status(
        pool,
        settings.schema,
        reaction_types,
        postgres_broker=broker_kind(settings.broker_url) is BrokerKind.POSTGRES,
    )
    consumers = [*projections, *reaction_types]
    with pool.connection() as conn:
        group = members(conn, settings.schema)
        partitioned = [
            p
            for p in (partition_status(conn, settings.schema, c) for c in consumers)
            if p.partitions > 1
        ]
    warnings = server_warnings(pool, settings.schema)
    if args.json:
        return json.dumps(
            {
                "projections": [r.as_json() for r in rows],
                "reactions": [r.as_json() for r in reactions],
                "workers": [asdict(m) for m in group],
                "warnings": warnings,
            },
            indent=2,
        )
    parts = []
    if rows:
        parts.append(render(rows))
    if reactions:
        parts.append(render_reactions(reactions))
    parts += [p.table() for p in partitioned]
    if group:
        parts.append(render_members(group))
    parts += [f"warning: {w}" for w in warnings]
    return "\n\n".join(parts)

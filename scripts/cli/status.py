"""``eventkit status``: per projection, its position, the log's head, lag, state, dead letters."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from eventkit.cli import EXIT_UNHEALTHY
from eventkit.cli.common import app_of, count, describe_app, seconds, settings_of
from eventkit.infrastructure.broker import BrokerKind, broker_kind
from eventkit.infrastructure.errors import UsageError
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
        type=seconds,
        metavar="SECONDS",
        help="refresh in place every SECONDS (default 2) until Ctrl-C; on a terminal the "
        "screen is redrawn, otherwise each report follows a line '-- HH:MM:SS'",
    )
    parser.add_argument(
        "--times", type=count, metavar="N", help="with --watch: stop after N refreshes"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 3 when a consumer is unhealthy: stopped (no live worker) or failing, "
        "lagging more than --max-lag seconds, or holding open dead letters (each reason "
        "on standard error); for scripts, cron and probes",
    )
    parser.add_argument(
        "--max-lag",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="with --check: the most lag, in seconds behind the oldest event not yet "
        "applied, that is still healthy (default %(default)s)",
    )
    parser.set_defaults(run=_run)


def render(rows: list[ConsumerStatus]) -> str:
    header = ("projection", "state", "position", "head", "lag", "lag s", "dead", "worker")
    lines = [header] + [
        (
            r.consumer,
            r.state + (f" ({r.detail})" if r.detail else ""),
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


def unhealthy(
    rows: list[ConsumerStatus], reactions: list[ReactionStatus], max_lag_s: float
) -> list[str]:
    """Why ``status --check`` fails: each consumer that is stopped or failing, lags more
    than ``max_lag_s`` seconds, or holds open dead letters."""
    reasons = []
    for name, state, lag_s, dead in [
        *((r.consumer, r.state, r.lag_seconds, r.dead_letters) for r in rows),
        *((r.reaction, r.state, r.lag_seconds, r.dead_letters) for r in reactions),
    ]:
        if state in ("stopped", "failing"):
            reasons.append(f"{name} is {state}")
        if lag_s > max_lag_s:
            reasons.append(f"{name} lags {lag_s:.1f} s (more than --max-lag {max_lag_s:g})")
        if dead:
            reasons.append(f"{name} has {dead} open dead letter(s) (eventkit dlq list)")
    return reasons


def _run(args: argparse.Namespace) -> int:
    if args.watch is None:
        text, reasons = _report(args)
        print(text)
        if args.check and reasons:
            sys.stdout.flush()
            print("eventkit: unhealthy: " + "; ".join(reasons), file=sys.stderr)
            return EXIT_UNHEALTHY
        return 0
    if args.check:
        raise UsageError("--check gives one answer: use it without --watch")
    terminal = sys.stdout.isatty()
    shown = 0
    try:
        while args.times is None or shown < args.times:
            report, _ = _report(args)
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


def _report(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The report, and the reasons the consumers are unhealthy (none when they are not)."""
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
    reasons = unhealthy(rows, reactions, args.max_lag)
    if args.json:
        report = json.dumps(
            {
                "projections": [r.as_json() for r in rows],
                "reactions": [r.as_json() for r in reactions],
                "workers": [asdict(m) for m in group],
                "warnings": warnings,
                "unhealthy": reasons,
            },
            indent=2,
        )
        return report, reasons
    parts = []
    if rows:
        parts.append(render(rows))
    if reactions:
        parts.append(render_reactions(reactions))
    parts += [p.table() for p in partitioned]
    if group:
        parts.append(render_members(group))
    parts += [f"warning: {w}" for w in warnings]
    return "\n\n".join(parts), reasons

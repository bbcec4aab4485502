"""The demo's command line and its story, in the order it is told."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import secrets
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg_pool

from eventkit.bootstrap import settings_with
from eventkit.cli.progress import Completion, Pacer, progress_bar
from eventkit.cli.status import render
from eventkit.infrastructure.factory import application_env, shared_pool
from eventkit.infrastructure.settings import Settings, redact
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.monitoring import Monitor, MonitoringServer
from eventkit.projections.projection import Projection
from eventkit.projections.shop import app
from eventkit.runner import build_followers
from eventkit.shop.demo.catalogue import CATALOGUE, stock_up
from eventkit.shop.demo.deadletters import (
    DEMO_RETRY,
    CustomerLedger,
    place_poison_order,
    retry_dead_letters,
)
from eventkit.shop.demo.ending import show_ending, show_interrupted
from eventkit.shop.demo.metrics import print_metrics
from eventkit.shop.demo.projections import (
    LagMonitor,
    drain,
    print_workers,
    quiet_workers,
    running,
)
from eventkit.shop.demo.reactions import run_reactions
from eventkit.shop.demo.readmodels import read_your_writes, show_read_models
from eventkit.shop.demo.summary import (
    check_stock,
    count,
    print_commands,
    print_events,
    print_rejections,
)
from eventkit.shop.demo.workload import DemoShop, Tally, run_writers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./scripts/demo", description="Run the example shop through a workload."
    )
    parser.add_argument("--writers", type=_positive, default=8, help="writer threads (8)")
    parser.add_argument("--orders", type=_positive, default=3000, help="orders to place (3000)")
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="random seed of the workload (1); thread timing still varies",
    )
    parser.add_argument(
        "--drop-schema",
        action="store_true",
        help="drop the demo's schema at the end without asking (by default a terminal is"
        " asked, and elsewhere the schema is kept)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the workers' own log lines too",
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    schema = f"demo_{stamp}_{secrets.token_hex(2)}"
    base = settings_with({"EVENTKIT_SCHEMA": schema})
    # Writers, the workers' reads of the log, status and queries share the pool.
    settings = dataclasses.replace(base, pool_max_size=max(base.pool_max_size, args.writers + 8))
    print(f"eventkit demo: the example shop under {args.writers} concurrent writers")
    started = time.perf_counter()
    env = application_env(settings)  # starts the embedded server if needed; migrates
    pool, url = shared_pool(settings)
    server = "DATABASE_URL" if settings.database_url else "embedded PostgreSQL"
    print(f"  server   {redact(url)} ({server}, ready in {time.perf_counter() - started:.1f} s)")
    print(f"  schema   {schema} (fresh for this run)")
    print(f"  seed     {args.seed}")

    tally = Tally()
    shop = DemoShop(env=env, tally=tally)
    try:
        with quiet_workers(args.verbose):
            is_sound = _run_demo(args, settings, shop=shop, tally=tally, pool=pool, url=url)
    except BaseException:
        show_interrupted(settings, pool, url, drop=args.drop_schema)
        raise
    finally:
        shop.close()
    is_ended = show_ending(settings, pool, url, drop=args.drop_schema)
    return 0 if is_sound and is_ended else 1


def _run_demo(
    args: argparse.Namespace,
    settings: Settings,
    *,
    shop: DemoShop,
    tally: Tally,
    pool: psycopg_pool.ConnectionPool,
    url: str,
) -> bool:
    """Set up, run writers and workers, show the views and dead letters; True if all held."""
    schema = settings.schema
    started = time.perf_counter()
    units = stock_up(shop, args.orders)
    poison = place_poison_order(shop)
    print(
        f"\nsetup: {len(CATALOGUE)} stock items registered, {units:,} units received, "
        f"order {poison.order_id} placed and paid ({time.perf_counter() - started:.1f} s)"
    )
    projections: list[type[Projection]] = [*app.projections, CustomerLedger]
    workers = build_followers(projections, settings, worker_id="demo", retry=DEMO_RETRY)
    applier = workers[-1].applier
    assert isinstance(applier, ProjectionApplier)
    ledger = applier.projection
    assert isinstance(ledger, CustomerLedger)
    ledger.poison.add(poison.order_id)  # before its worker starts: the order is poison
    print_workers(workers, poison.order_id)
    monitor = LagMonitor(pool, schema, projections, tally, args.orders)
    health = Monitor(
        pool, schema, projections=projections, loops=[w.beat for w in workers], interval_s=1.0
    )
    server = MonitoringServer(health, 0, host="127.0.0.1").start()
    metrics_url = f"http://127.0.0.1:{server.port}"
    print(f"metrics: {metrics_url}/metrics (Prometheus), {metrics_url}/healthz, /readyz")
    health_stop = threading.Event()
    health_thread = threading.Thread(target=health.run, args=(health_stop,), daemon=True)
    health_thread.start()
    with running(workers):
        before = count(pool, schema).events
        wall = _write(args, shop, tally, monitor)
        is_drained = drain(monitor)
        rows = monitor.status()
        print(
            f"\na position such as {rows[0].position} is transaction id/notification id:"
            " the id of the transaction that wrote an event, and the event's number in the"
            " log; followers read the log in that order"
        )
        print("  $ eventkit status")
        print(textwrap.indent(render(rows), "    "))
        print_commands(tally, args.writers, args.orders, wall)
        print_rejections(tally, shop.max_attempts)
        print_events(count(pool, schema), before, wall)
        is_sound = check_stock(shop, pool, schema)
        if not is_drained:
            print(
                "\nread models, read your writes and dead letters: skipped, as the views did"
                " not catch up (see `eventkit status` above and the workers' log)"
            )
            return False
        views_agree = show_read_models(shop, pool, schema)
        read_your_writes(shop, pool, schema)
        is_healed = retry_dead_letters(ledger, poison.order_id, pool, schema, url)
        health.refresh()
        print_metrics(metrics_url)
    health_stop.set()
    health_thread.join()
    server.stop()
    reactions_done = run_reactions(shop, settings, pool, url)
    return is_drained and is_sound and views_agree and is_healed and reactions_done


def _write(args: argparse.Namespace, shop: DemoShop, tally: Tally, monitor: LagMonitor) -> float:
    """Run the writers under a progress bar, with the lag now and then; return the seconds."""
    started = time.perf_counter()

    def completion() -> Completion:
        return Completion(tally.finished, args.orders, time.perf_counter() - started)

    # A line every 2 s at first, then every 10 s: a long run still shows it is moving.
    pacer = Pacer(2.0, 10.0, 10)
    monitor.header()
    with progress_bar("orders", args.orders, "orders") as advance:

        def tick() -> None:
            advance(tally.finished)
            if pacer.is_due():
                monitor.show(monitor.status(), "writing: " + completion().describe("orders"))

        run_writers(
            shop, tally, writers=args.writers, orders=args.orders, seed=args.seed, tick=tick
        )
    written = completion()
    monitor.show(monitor.status(), "written: " + written.describe("orders"))
    return written.elapsed_s


def main(argv: Sequence[str] | None = None) -> int:
    """``./scripts/demo``: parse the arguments, run the demo, exit 0 when it passed."""
    from eventkit.cli import logs
    from eventkit.infrastructure.errors import EventkitError

    args = build_parser().parse_args(argv)
    logs.configure(logging.INFO, "text")
    try:
        return run(args)
    except EventkitError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

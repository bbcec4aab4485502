"""``eventkit demo``: the example shop under a realistic workload.

Registers a catalogue, receives stock, then runs concurrent writer threads that place
orders, capture or fail payments, cancel and ship orders, restock, and now and then send a
command that must be rejected (bad data, unknown sku, not enough stock, illegal transition).
The shop's projection workers run in threads beside the writers, with a demo-only
projection that fails on purpose for one order. Every run records into a fresh schema, so
runs never mix; the schema is kept so that the events and views can be read in SQL
afterwards. Prints what was written, read back from the database; the lag of each
projection while the writers run and until it drains to zero; query results from the read
models; and the poison order's events parked as dead letters, then retried in order.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import random
import secrets
import sys
import textwrap
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg_pool
from eventsourcing.persistence import IntegrityError
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from eventkit.bootstrap import settings_with
from eventkit.cli.status import render
from eventkit.domain.names import AGGREGATE_TYPES, EVENT_TYPES
from eventkit.domain.shop.application import CommandResult, OrderPlacement, Shop
from eventkit.domain.shop.commands import (
    CancelOrder,
    CapturePayment,
    Command,
    FailPayment,
    OrderLineRequest,
    PlaceOrder,
    ReceiveStock,
    RegisterStockItem,
    ShipOrder,
    parse_command,
)
from eventkit.domain.shop.errors import DomainError
from eventkit.domain.shop.orders import Order
from eventkit.domain.shop.stock import StockItem
from eventkit.infrastructure.broker import BrokerOptions
from eventkit.infrastructure.deadletters import DeadLetters
from eventkit.infrastructure.factory import application_env, shared_pool
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings, redact
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.app import Runtime
from eventkit.projections.monitoring import Monitor, MonitoringServer
from eventkit.projections.projection import Context, Projection, Table, handles
from eventkit.projections.queries import Queries
from eventkit.projections.reactor import reaction_runtime
from eventkit.projections.shop import (
    OrderSummaryQueries,
    RevenueQueries,
    StockLevelQueries,
    app,
)
from eventkit.projections.shop.reactions import ChargePayments
from eventkit.projections.status import ProjectionStatus, projection_status
from eventkit.projections.worker import ProjectionWorker, RetryPolicy
from eventkit.runner import build_workers, run_until
from eventkit.shop.gateway import FakeGateway

#: (sku, name, unit price, popularity): popular items run short and collide more often.
CATALOGUE: tuple[tuple[str, str, str, int], ...] = (
    ("TEA-GREEN", "Sencha green tea, 100 g", "6.90", 9),
    ("TEA-BLACK", "Assam black tea, 250 g", "8.50", 8),
    ("TEA-EARL", "Earl Grey, 100 g", "5.75", 6),
    ("COF-BEANS", "Espresso beans, 1 kg", "21.00", 10),
    ("COF-GROUND", "Filter coffee, 500 g", "9.40", 5),
    ("MUG-WHITE", "Stoneware mug, white", "12.00", 4),
    ("MUG-BLUE", "Stoneware mug, blue", "12.00", 3),
    ("POT-1L", "Glass teapot, 1 l", "29.90", 2),
    ("KETTLE-GOOSE", "Gooseneck kettle", "54.00", 2),
    ("FILTER-100", "Paper filters, 100 pcs", "3.20", 4),
    ("GRINDER-HAND", "Hand grinder", "39.00", 1),
    ("SCALE-01", "Brewing scale", "24.50", 1),
    ("HONEY-500", "Acacia honey, 500 g", "7.80", 3),
    ("SUGAR-CUBES", "Cane sugar cubes, 1 kg", "2.90", 2),
    ("BISCUIT-ALM", "Almond biscuits", "4.10", 5),
    ("CHOC-DARK", "Dark chocolate, 70%", "3.60", 6),
    ("CUP-SET-6", "Espresso cups, set of 6", "32.00", 1),
    ("INFUSER-01", "Tea infuser", "4.90", 2),
    ("GIFT-BOX", "Gift box", "15.00", 2),
    ("LTD-MATCHA", "Limited edition matcha, 30 g", "18.00", 6),
)
#: How many lines an order has, and how many units a line asks for, with their weights.
_LINES = ((1, 2, 3, 4), (50, 30, 15, 5))
_UNITS = ((1, 2, 3, 4), (3, 2, 1, 1))

#: The order events whose counts in the log the demo checks against the views.
_ORDER_EVENTS = (Order.Placed, Order.Paid, Order.Shipped, Order.Cancelled)


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
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class Tally:
    """Accepted and rejected commands, rejection examples and conflicts, across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.examples: defaultdict[str, list[str]] = defaultdict(list)
        self.conflicts = 0
        self.gave_up = 0

    def run(self, name: str, action: Callable[[], Any]) -> Any:
        """Run one command; return its result, or None when it was rejected."""
        try:
            result = action()
        except (DomainError, IntegrityError) as e:
            error = type(e).__name__
            with self._lock:
                self.rejected[name] += 1
                self.errors[error] += 1
                if isinstance(e, IntegrityError):
                    self.gave_up += 1
                examples = self.examples[error]
                if len(examples) < 2 and str(e) not in examples:
                    examples.append(str(e))
            return None
        with self._lock:
            self.accepted[name] += 1
        return result

    def conflict(self) -> None:
        with self._lock:
            self.conflicts += 1

    def total(self) -> int:
        """Commands run so far, accepted or rejected."""
        with self._lock:
            return sum(self.accepted.values()) + sum(self.rejected.values())


class DemoShop(Shop):
    """The shop, counting the concurrency conflicts it retries."""

    name = "Shop"

    def __init__(self, env: dict[str, str], tally: Tally) -> None:
        super().__init__(env=env)
        self.tally = tally

    def after_conflict(self, command: object, attempt: int, error: IntegrityError) -> None:
        self.tally.conflict()


class Writer:
    """One writer thread: places its share of orders and moves them along, interleaved."""

    def __init__(self, shop: Shop, tally: Tally, orders: int, rng: random.Random) -> None:
        self.shop = shop
        self.tally = tally
        self.orders = orders
        self.rng = rng
        self.in_flight: list[tuple[OrderPlacement, list[str]]] = []
        self.skus = [sku for sku, *_ in CATALOGUE]
        self.weights = [weight for *_, weight in CATALOGUE]

    def __call__(self) -> None:
        placed = 0
        while placed < self.orders or self.in_flight:
            if placed < self.orders and (len(self.in_flight) < 6 or self.rng.random() < 0.4):
                placed += 1
                self.new_order()
            else:
                self.advance(self.in_flight.pop(self.rng.randrange(len(self.in_flight))))

    def new_order(self) -> None:
        """Place one order; now and then restock or send a bad command first."""
        roll = self.rng.random()
        if roll < 0.03:
            self.send_invalid()
        elif roll < 0.07:
            sku = self.rng.choices(self.skus, self.weights)[0]
            quantity = self.rng.randint(10, 40)
            self.tally.run(
                "ReceiveStock",
                lambda: self.shop.receive_stock(ReceiveStock(sku=sku, quantity=quantity)),
            )
        count = self.rng.choices(*_LINES)[0]
        skus = set(self.rng.choices(self.skus, self.weights, k=count))
        if roll > 0.99:
            skus.add("NO-SUCH-SKU")  # rejected: UnknownStockItemError
        lines = tuple(
            OrderLineRequest(sku=sku, quantity=self.rng.choices(*_UNITS)[0]) for sku in sorted(skus)
        )
        command = PlaceOrder(customer_id=f"customer-{self.rng.randrange(500)}", lines=lines)
        placement = self.tally.run("PlaceOrder", lambda: self.shop.place_order(command))
        if placement is not None:
            self.in_flight.append((placement, self.plan()))

    def plan(self) -> list[str]:
        """The steps an order will go through, some of them illegal on purpose."""
        roll = self.rng.random()
        if roll < 0.02:
            return ["ship", "capture", "ship"]  # shipping before payment is rejected
        if roll < 0.09:
            return ["fail"]
        if roll < 0.16:
            return ["cancel", "capture"] if self.rng.random() < 0.3 else ["cancel"]
        if roll < 0.18:
            return ["capture", "ship", "cancel"]  # cancelling a shipped order is rejected
        return ["capture", "ship"] if self.rng.random() < 0.92 else ["capture"]

    def advance(self, item: tuple[OrderPlacement, list[str]]) -> None:
        placement, steps = item
        step = steps.pop(0)
        order_id, payment_id = placement.order_id, placement.payment_id
        actions: dict[str, tuple[str, Callable[[], Any]]] = {
            "capture": (
                "CapturePayment",
                lambda: self.shop.capture_payment(CapturePayment(payment_id=payment_id)),
            ),
            "fail": (
                "FailPayment",
                lambda: self.shop.fail_payment(
                    FailPayment(payment_id=payment_id, reason="card declined")
                ),
            ),
            "cancel": (
                "CancelOrder",
                lambda: self.shop.cancel_order(
                    CancelOrder(order_id=order_id, reason="customer changed their mind")
                ),
            ),
            "ship": ("ShipOrder", lambda: self.shop.ship_order(ShipOrder(order_id=order_id))),
        }
        self.tally.run(*actions[step])
        if steps:
            self.in_flight.append((placement, steps))

    def send_invalid(self) -> None:
        """Send a command with bad data: parse_command rejects it before the shop sees it."""
        bad: list[tuple[type[Command], dict[str, Any]]] = [
            (PlaceOrder, {"customer_id": "", "lines": [{"sku": "TEA-GREEN", "quantity": 1}]}),
            (PlaceOrder, {"customer_id": "c-1", "lines": [{"sku": "tea", "quantity": 1}]}),
            (PlaceOrder, {"customer_id": "c-1", "lines": [{"sku": "TEA-EARL", "quantity": 0}]}),
            (PlaceOrder, {"customer_id": "c-1", "lines": []}),
            (ReceiveStock, {"sku": "MUG-BLUE", "quantity": -5}),
            (CancelOrder, {"order_id": "not-a-uuid", "reason": "x"}),
        ]
        command_class, data = self.rng.choice(bad)
        self.tally.run(command_class.__name__, lambda: parse_command(command_class, data))


#: The demo's workers retry a failing event quickly, so the poison order is parked at once.
DEMO_RETRY = RetryPolicy(max_attempts=3, first_delay_s=0.05, max_delay_s=0.2)
#: How often the projections' lag is shown while the writers run.
PROGRESS_EVERY_S = 2.0


class CustomerLedger(Projection):
    """Demo only: what each customer ordered and paid, one entry per order event.

    Its handlers raise for the orders in ``poison``, as a bug would: the demo shows the
    first such event parked as a dead letter with the rest of its stream behind it, other
    orders going on, and the stream retried in order once the bug is fixed.
    """

    name = "customer_ledger"
    tables = (
        Table(
            "customer_ledger",
            "CREATE TABLE {table} (order_id uuid, version bigint, customer_id text NOT NULL,"
            " kind text NOT NULL, amount numeric NOT NULL, PRIMARY KEY (order_id, version));"
            "CREATE INDEX ON {table} (customer_id)",
        ),
    )

    def __init__(self) -> None:
        self.poison: set[UUID] = set()

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        self._check(event)
        context.execute(
            "INSERT INTO {customer_ledger} (order_id, version, customer_id, kind, amount)"
            " VALUES (%s, %s, %s, 'placed', %s)",
            (event.originator_id, event.originator_version, event.customer_id, event.total),
        )

    @handles
    def paid(self, event: Order.Paid, context: Context) -> None:
        self._check(event)
        # Copies the placed entry: were a paid event applied before its order's placed
        # event (say, past a parked one), no row would match.
        row = context.execute(
            "INSERT INTO {customer_ledger} (order_id, version, customer_id, kind, amount)"
            " SELECT order_id, %s, customer_id, 'paid', amount FROM {customer_ledger}"
            " WHERE order_id = %s AND kind = 'placed' RETURNING order_id",
            (event.originator_version, event.originator_id),
        ).fetchone()
        if row is None:
            raise LookupError(f"order {event.originator_id} was paid but is not in the ledger")

    def _check(self, event: Order.Event) -> None:
        if event.originator_id in self.poison:
            raise RuntimeError(f"order {event.originator_id} is poison (a bug, on purpose)")


class CustomerLedgerQueries(Queries):
    """Reads of the demo's ledger."""

    projection = CustomerLedger

    def entries(self, order_id: UUID) -> list[tuple[int, str, Decimal]]:
        """An order's entries in stream order: (version, kind, amount)."""
        rows = self.fetch(
            "SELECT version, kind, amount FROM {customer_ledger} WHERE order_id = %s"
            " ORDER BY version",
            (order_id,),
        )
        return [(int(r[0]), str(r[1]), Decimal(r[2])) for r in rows]

    def order_count(self) -> int:
        rows = self.fetch("SELECT count(DISTINCT order_id) FROM {customer_ledger}")
        return int(rows[0][0])


class LagMonitor:
    """``eventkit status`` condensed to one line: each projection's lag, now and then."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        schema: str,
        projections: Sequence[type[Projection]],
        tally: Tally,
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.projections = projections
        self.tally = tally
        self.widths = [max(len(p.name), 14) for p in projections]
        self.started = time.perf_counter()

    def status(self) -> list[ProjectionStatus]:
        return projection_status(self.pool, self.schema, self.projections)

    def header(self) -> None:
        print("\nprojections: lag = events not yet in each view / age in seconds of the oldest")
        names = zip(self.projections, self.widths, strict=True)
        print(f"  {'time':>6}  {'commands':>8}" + "".join(f"  {p.name:>{w}}" for p, w in names))

    def show(self, rows: list[ProjectionStatus], note: str) -> None:
        lags = {r.projection: f"{r.lag_events:,} / {r.lag_seconds:.1f}" for r in rows}
        cells = "".join(
            f"  {lags.get(p.name, '-'):>{w}}"
            for p, w in zip(self.projections, self.widths, strict=True)
        )
        elapsed = time.perf_counter() - self.started
        print(f"  {elapsed:>5.1f}s  {self.tally.total():>8,}{cells}  {note}")


class _QuietWorkers(logging.Filter):
    """Drops the workers' routine lines and the demo projection's expected failures."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return record.levelno >= logging.WARNING and CustomerLedger.name not in args[:1]


@contextlib.contextmanager
def _quiet_workers(verbose: bool) -> Iterator[None]:
    """Keep the output to what the demo prints itself (all of it with ``eventkit -v``)."""
    if verbose:
        yield
        return
    worker_logger, quiet = logging.getLogger("eventkit.projections.worker"), _QuietWorkers()
    worker_logger.addFilter(quiet)
    # The reactions' failures and dead letters are the demo's to tell, and dramatiq's
    # start and stop lines are noise here.
    silenced = [
        logging.getLogger(name)
        for name in ("eventkit.projections.reactor", "eventkit.projections.monitoring", "dramatiq")
    ]
    levels = [lg.level for lg in silenced]
    for lg in silenced:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        worker_logger.removeFilter(quiet)
        for lg, level in zip(silenced, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _running(workers: Sequence[ProjectionWorker]) -> Iterator[None]:
    """Run the workers in threads for the block; then stop them and wait for them."""
    stop = threading.Event()
    runner = threading.Thread(
        target=run_until, args=(workers, stop), name="demo-workers", daemon=True
    )
    runner.start()
    try:
        yield
    finally:
        stop.set()
        started = time.perf_counter()
        runner.join(timeout=30)
        if runner.is_alive():
            print("\nworkers: NOT stopped 30 s after they were asked to")
        else:
            print(
                f"\nworkers stopped {time.perf_counter() - started:.2f} s after they were "
                "asked to, each after committing the batch in hand"
            )


def _print_workers(workers: Sequence[ProjectionWorker], poison: UUID) -> None:
    print(
        f"workers: {', '.join(w.name for w in workers)}, a thread each; a failing event "
        f"is tried {DEMO_RETRY.max_attempts} times, {DEMO_RETRY.first_delay_s} s apart at first"
    )
    print(f"  {CustomerLedger.name} is the demo's own; it fails on purpose for order {poison}")


def _place_poison_order(shop: Shop) -> OrderPlacement:
    """An order, paid: two events of one stream for the demo's ledger to choke on."""
    placed = shop.place_order(
        PlaceOrder(
            customer_id="customer-13", lines=(OrderLineRequest(sku="TEA-BLACK", quantity=2),)
        )
    )
    shop.capture_payment(CapturePayment(payment_id=placed.payment_id))
    return placed


def _drain(monitor: LagMonitor, timeout: float = 30.0) -> bool:
    """Show the lag now and then until every view has the last event; False on timeout.

    The lag counts every committed event of a view's types, readable or not; the demo
    also waits until each view's position has passed the demo's own last event (of any
    type), which followers reach only once no older transaction anywhere on the server
    holds it back from them.
    """
    last = _last_position(monitor.pool, monitor.schema)
    deadline = time.monotonic() + timeout
    shown, lines = 0.0, 0
    while True:
        rows = monitor.status()
        is_lag_zero = all(r.lag_events == 0 for r in rows)
        drained = is_lag_zero and all(Position.parse(r.position) >= last for r in rows)
        # A line a second at first; fewer when draining takes long.
        if drained or time.monotonic() - shown >= (1.0 if lines < 5 else 5.0):
            lines += 1
            note = "draining"
            if drained:
                note = "drained: every view has the last event"
            elif is_lag_zero:
                note = f"waiting for {last}: an older transaction is open on the server"
            monitor.show(rows, note)
            shown = time.monotonic()
        if drained:
            return True
        if time.monotonic() > deadline:
            print(f"  the views did NOT reach the last event ({last}) within {timeout:.0f} s")
            return False
        time.sleep(0.05)


def _last_position(pool: psycopg_pool.ConnectionPool, schema: str) -> Position:
    """The log position of the last event committed so far, whether followers may read it
    yet or not."""
    return PostgresEventRecorder(pool, schema).last_recorded() or Position.ORIGIN


@dataclasses.dataclass(frozen=True)
class Counts:
    """What the event store holds, counted in the database."""

    events: int
    streams: int
    per_type: list[tuple[str, int]]


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
        with _quiet_workers(getattr(args, "verbose", False)):
            is_sound = _run_demo(args, settings, shop=shop, tally=tally, pool=pool, url=url)
    finally:
        shop.close()
    print(f"\nthe data lives in schema {schema} at {redact(url)}; look at it in SQL:")
    query = f"SELECT topic, state FROM {schema}.stored_events_json LIMIT 5"
    print(f"  {query};")
    print(f"  from a shell: psql \"$(eventkit db url)\" -c '{query}'")
    print(f"  drop it when done: DROP SCHEMA {schema} CASCADE;")
    return 0 if is_sound else 1


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
    units = _stock_up(shop, args.orders)
    poison = _place_poison_order(shop)
    print(
        f"\nsetup: {len(CATALOGUE)} stock items registered, {units:,} units received, "
        f"order {poison.order_id} placed and paid ({time.perf_counter() - started:.1f} s)"
    )
    projections: list[type[Projection]] = [*app.projections, CustomerLedger]
    workers = build_workers(projections, settings, worker_id="demo", retry=DEMO_RETRY)
    ledger = workers[-1].projection
    assert isinstance(ledger, CustomerLedger)
    ledger.poison.add(poison.order_id)  # before its worker starts: the order is poison
    _print_workers(workers, poison.order_id)
    monitor = LagMonitor(pool, schema, projections, tally)
    health = Monitor(pool, schema, projections=projections, workers=workers, interval_s=1.0)
    server = MonitoringServer(health, 0, host="127.0.0.1").start()
    metrics_url = f"http://127.0.0.1:{server.port}"
    print(f"metrics: {metrics_url}/metrics (Prometheus), {metrics_url}/healthz, /readyz")
    health_stop = threading.Event()
    health_thread = threading.Thread(target=health.run, args=(health_stop,), daemon=True)
    health_thread.start()
    with _running(workers):
        before = _count(pool, schema).events
        started = time.perf_counter()
        _run_writers(shop, tally, args, monitor)
        wall = time.perf_counter() - started
        is_drained = _drain(monitor)
        print("\n  $ eventkit status")
        print(textwrap.indent(render(monitor.status()), "    "))
        _print_commands(tally, args, wall)
        _print_rejections(tally, shop.max_attempts)
        _print_events(_count(pool, schema), before, wall)
        is_sound = _check_stock(shop, pool, schema)
        if not is_drained:
            print(
                "\nread models, read your writes and dead letters: skipped, as the views did"
                " not catch up (see `eventkit status` above and the workers' log)"
            )
            return False
        views_agree = _show_read_models(shop, pool, schema)
        _read_your_writes(shop, pool, schema)
        is_healed = _retry_dead_letters(ledger, poison.order_id, pool, schema, url)
        health.refresh()
        _print_metrics(metrics_url)
    health_stop.set()
    health_thread.join()
    server.stop()
    reactions_done = _run_reactions(shop, settings, pool, url)
    return is_drained and is_sound and views_agree and is_healed and reactions_done


def _stock_up(shop: Shop, orders: int) -> int:
    """Register the catalogue and receive about 70% of what the orders will ask for."""
    total_weight = sum(weight for *_, weight in CATALOGUE)
    demand = orders * _mean(*_LINES) * _mean(*_UNITS)
    units = 0
    for sku, name, price, weight in CATALOGUE:
        shop.register_stock_item(RegisterStockItem(sku=sku, name=name, unit_price=Decimal(price)))
        # The limited edition runs out early, so some orders for it are rejected.
        share = 0.15 if sku.startswith("LTD-") else 0.7
        quantity = max(10, int(demand * weight / total_weight * share))
        shop.receive_stock(ReceiveStock(sku=sku, quantity=quantity))
        units += quantity
    return units


def _run_writers(shop: Shop, tally: Tally, args: argparse.Namespace, monitor: LagMonitor) -> None:
    """Run the writer threads to the end, showing the projections' lag now and then."""
    shares = [args.orders // args.writers] * args.writers
    for i in range(args.orders % args.writers):
        shares[i] += 1
    writers = [
        Writer(shop, tally, share, random.Random(args.seed * 1000 + i))
        for i, share in enumerate(shares)
    ]
    monitor.header()
    with ThreadPoolExecutor(max_workers=args.writers, thread_name_prefix="writer") as executor:
        futures = [executor.submit(writer) for writer in writers]
        while True:
            done, pending = wait(futures, timeout=PROGRESS_EVERY_S, return_when=FIRST_EXCEPTION)
            if not pending or any(f.exception() is not None for f in done):
                break
            monitor.show(monitor.status(), "writing")
        for future in futures:
            future.result()  # a writer's unexpected error ends the demo with it


def _mean(values: tuple[int, ...], weights: tuple[int, ...]) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def _print_commands(tally: Tally, args: argparse.Namespace, wall: float) -> None:
    accepted, rejected = sum(tally.accepted.values()), sum(tally.rejected.values())
    print(
        f"workload: {args.writers} writers, {args.orders:,} orders, {accepted + rejected:,} "
        f"commands in {wall:.1f} s"
    )
    print(f"\n  {'command':<16}{'accepted':>10}{'rejected':>10}")
    for name in sorted(set(tally.accepted) | set(tally.rejected)):
        print(f"  {name:<16}{tally.accepted[name]:>10,}{tally.rejected[name]:>10,}")
    print(f"  {'total':<16}{accepted:>10,}{rejected:>10,}")


def _print_rejections(tally: Tally, max_attempts: int) -> None:
    print("\nrejections by error, with examples:")
    for error, n in tally.errors.most_common():
        print(f"  {error} ({n:,})")
        for example in tally.examples[error]:
            shown = example if len(example) <= 200 else example[:197] + "..."
            print(f"    - {shown}")
    print(
        f"\nconcurrency: {tally.conflicts:,} saves conflicted with another writer; "
        f"{tally.conflicts - tally.gave_up:,} were retried on fresh aggregates, and "
        f"{tally.gave_up:,} command(s) gave up after {max_attempts} attempts"
    )


def _print_events(counts: Counts, before: int, wall: float) -> None:
    print(
        f"\nevents: {counts.events:,} in {counts.streams:,} streams (counted in the database); "
        f"{(counts.events - before) / wall:,.0f} events/s appended during the workload"
    )
    for topic, n in counts.per_type:
        print(f"  {n:>8,}  {topic}")


#: Per stock item and version: units on hand and reserved, summed over the stream so far.
_STOCK_HISTORY = """
WITH deltas AS (
    SELECT originator_id, originator_version,
        CASE topic WHEN %(received)s THEN q WHEN %(committed)s THEN -q ELSE 0 END AS on_hand,
        CASE topic WHEN %(reserved)s THEN q WHEN %(released)s THEN -q
            WHEN %(committed)s THEN -q ELSE 0 END AS reserved
    FROM (
        SELECT originator_id, originator_version, topic,
            coalesce((state->>'quantity')::bigint, 0) AS q
        FROM {} WHERE topic LIKE %(stock_topics)s
    ) AS e
), running AS (
    SELECT sum(on_hand) OVER w AS on_hand, sum(reserved) OVER w AS reserved
    FROM deltas WINDOW w AS (PARTITION BY originator_id ORDER BY originator_version)
)
SELECT count(*) FILTER (WHERE NOT (on_hand >= reserved AND reserved >= 0)), count(*)
FROM running
"""


def _check_stock(shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str) -> bool:
    """Print whether a stock item was ever oversold; return True if none was.

    Checks the invariant at every version of every stock item, in SQL on the stored
    events, and the shop's current view of each item.
    """
    topics = {
        name: EVENT_TYPES.name(event_class)
        for name, event_class in [
            ("received", StockItem.Received),
            ("reserved", StockItem.Reserved),
            ("released", StockItem.Released),
            ("committed", StockItem.ReservationCommitted),
        ]
    }
    query = sql.SQL(_STOCK_HISTORY).format(sql.Identifier(schema, "stored_events_json"))
    with pool.connection() as conn:
        row = conn.execute(
            query, {**topics, "stock_topics": AGGREGATE_TYPES.name(StockItem) + ".%"}
        ).fetchone()
    assert row is not None
    violations, versions = row
    views = [shop.get_stock(sku) for sku, *_ in CATALOGUE]
    oversold = [v for v in views if not v.on_hand >= v.reserved >= 0]
    if violations or oversold:
        print(
            f"\nstock: OVERSOLD at {violations} version(s): "
            + ", ".join(f"{v.sku} (on hand {v.on_hand}, reserved {v.reserved})" for v in oversold)
        )
        return False
    print(
        f"\nstock: never oversold: on_hand >= reserved >= 0 at each of the {versions:,} "
        f"versions of the {len(views)} stock items (checked in SQL); now "
        f"{sum(v.on_hand for v in views):,} on hand, {sum(v.reserved for v in views):,} "
        "reserved for orders not yet shipped"
    )
    return True


def _count(pool: psycopg_pool.ConnectionPool, schema: str) -> Counts:
    table = sql.Identifier(schema, "stored_events")
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT originator_id) FROM {}").format(table)
        ).fetchone()
        per_type = conn.execute(
            sql.SQL("SELECT topic, count(*) FROM {} GROUP BY topic ORDER BY 2 DESC").format(table)
        ).fetchall()
    assert row is not None
    return Counts(events=row[0], streams=row[1], per_type=[(t, n) for t, n in per_type])


def _show_read_models(shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str) -> bool:
    """Print query results from the shop's views; return True if they agree with the log."""
    by_status = OrderSummaryQueries(pool, schema).count_by_status()
    levels = sorted(StockLevelQueries(pool, schema).all(), key=lambda s: (s.available, s.sku))
    revenue = RevenueQueries(pool, schema)
    today = datetime.now(UTC).date()
    days = revenue.between(today - timedelta(days=1), today)
    print("\nread models, through their query classes:")
    statuses = sorted(by_status.items(), key=lambda item: -item[1])
    print("  orders by status: " + ", ".join(f"{s} {n:,}" for s, n in statuses))
    print("  least available stock:")
    for level in levels[:5]:
        print(
            f"    {level.sku:<13} {level.on_hand:>5,} on hand {level.reserved:>5,} reserved "
            f"{level.available:>5,} available  ({level.name})"
        )
    print("  revenue per day:")
    for day in days:
        print(
            f"    {day.day}  {day.paid_orders:>6,} paid orders  "
            f"{day.revenue:>12,.2f} {day.currency}"
        )
    totals = ", ".join(f"{amount:,.2f} {currency}" for currency, amount in revenue.total().items())
    print(f"  revenue in total: {totals}")

    per_type = dict(_count(pool, schema).per_type)
    seen = {cls: per_type.get(EVENT_TYPES.name(cls), 0) for cls in _ORDER_EVENTS}
    expected = {
        "orders": (sum(by_status.values()), seen[Order.Placed]),
        "paid orders": (sum(d.paid_orders for d in days), seen[Order.Paid]),
        "shipped": (by_status.get("shipped", 0), seen[Order.Shipped]),
        "cancelled": (by_status.get("cancelled", 0), seen[Order.Cancelled]),
    }
    wrong = [
        f"{what}: {view:,} in the view, {log:,} in the log"
        for what, (view, log) in expected.items()
        if view != log
    ]
    wrong += [
        f"{level.sku}: {level.on_hand}/{level.reserved} in the view, "
        f"{item.on_hand}/{item.reserved} in the aggregate"
        for level in levels
        if (item := shop.get_stock(level.sku))
        and (level.on_hand, level.reserved) != (item.on_hand, item.reserved)
    ]
    if len(levels) != len(CATALOGUE):
        wrong.append(f"{len(levels)} stock levels in the view, {len(CATALOGUE)} stock items")
    if wrong:
        print("  the views DISAGREE with the event store: " + "; ".join(wrong))
        return False
    print(
        "  the views agree with the event store: "
        + ", ".join(f"{view:,} {what}" for what, (view, _) in expected.items())
        + f" = their events; {len(levels)} stock levels = the stock item aggregates"
    )
    return True


def _read_your_writes(shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str) -> None:
    """Place and pay an order, and read each change back from the view as soon as it is in."""
    orders = OrderSummaryQueries(pool, schema)
    best = max(StockLevelQueries(pool, schema).all(), key=lambda s: s.available)
    print(
        "\nread your writes: a query given a command's notification id waits for the view"
        " to have it"
    )
    line = OrderLineRequest(sku=best.sku, quantity=1)
    started = time.perf_counter()
    placed = shop.place_order(PlaceOrder(customer_id="customer-ryw", lines=(line,)))
    _read_back(orders, "PlaceOrder", placed.order_id, placed, started)
    started = time.perf_counter()
    paid = shop.capture_payment(CapturePayment(payment_id=placed.payment_id))
    _read_back(orders, "CapturePayment", placed.order_id, paid, started)


def _read_back(
    orders: OrderSummaryQueries,
    command: str,
    order_id: UUID,
    result: CommandResult,
    started: float,
) -> None:
    """Read an order back, waiting for the command's last event; print how long it took."""
    command_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    summary = orders.get(order_id, wait_for=result.notification_id)
    print(
        f"  {command:<15}({command_ms:4.1f} ms) then get(order, wait_for="
        f"{result.notification_id}) -> {'NOT FOUND' if summary is None else summary.status!r}"
        f" after {(time.perf_counter() - started) * 1000:.1f} ms"
    )


def _retry_dead_letters(
    ledger: CustomerLedger,
    poison: UUID,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    url: str,
) -> bool:
    """Show the poison order's dead letters, fix the handler, retry; True if all applied."""
    queries = CustomerLedgerQueries(pool, schema)
    print(
        f"\ndead letters: {CustomerLedger.name} applied the events of "
        f"{queries.order_count():,} other orders; order {poison} failed {DEMO_RETRY.max_attempts} "
        "times and was parked, with its later event parked behind it:"
    )
    with _cli_env(url, schema):
        _eventkit("dlq", "list")
        ledger.poison.clear()
        print("  the bug is fixed (the poison set is cleared); the running worker retries:")
        started = time.perf_counter()
        code = _eventkit("dlq", "retry", "--consumer", CustomerLedger.name, "--timeout", "10")
        wall = time.perf_counter() - started
        entries = queries.entries(poison)
        print(
            f"  in {wall:.1f} s; the order's ledger entries now, in stream order: "
            + ", ".join(f"v{version} {kind} {amount}" for version, kind, amount in entries)
        )
        _eventkit("dlq", "list")
    return code == 0 and [kind for _, kind, _ in entries] == ["placed", "paid"]


def _print_metrics(base: str) -> None:
    """A few figures read back from the demo's own metrics endpoint."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    processed: defaultdict[str, float] = defaultdict(float)
    latency: dict[str, dict[float, float]] = defaultdict(dict)
    figures: defaultdict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "eventkit_events_processed_total":
                processed[labels["name"]] += sample.value
            elif sample.name == "eventkit_commit_to_processed_seconds_bucket":
                latency[labels["name"]][float(labels["le"])] = sample.value
            elif sample.name in {
                "eventkit_events_appended_total",
                "eventkit_retries_total",
                "eventkit_dead_letters_parked_total",
            }:
                figures[sample.name] += sample.value
    print(f"\nread back from {base}/metrics:")
    print(
        f"  events appended {figures['eventkit_events_appended_total']:,.0f}; retries "
        f"{figures['eventkit_retries_total']:,.0f}; dead letters parked "
        f"{figures['eventkit_dead_letters_parked_total']:,.0f}"
    )
    for name, count in sorted(processed.items()):
        print(
            f"  {name}: {count:,.0f} events processed; commit-to-processed p99 "
            f"<= {_p99_bound(latency.get(name, {}))}"
        )
    with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
        print(f"  /readyz: {response.status} {response.read().decode().strip()}")


def _p99_bound(buckets: dict[float, float]) -> str:
    """The upper bound of the histogram bucket that holds the 99th percentile."""
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return "-"
    for bound in sorted(buckets):
        if buckets[bound] >= 0.99 * total:
            return "inf" if bound == float("inf") else f"{bound * 1000:g} ms"
    return "-"


#: Demo orders placed while the reactions run; the gateway declines amounts over the limit.
REACTION_ORDERS = 24
GATEWAY_LIMIT = Decimal("60.00")


def _run_reactions(
    shop: Shop, settings: Settings, pool: psycopg_pool.ConnectionPool, url: str
) -> bool:
    """The payment process on reactions, through a gateway that fails and then recovers."""
    schema = settings.schema
    print(
        "\nreactions: charge_payments (an HTTP payment gateway, the message id as idempotency "
        "key), ship_paid_orders, order_mails (written through the idempotency ledger); they "
        "start at the head of the log, as if deployed now"
    )
    head = _last_position(pool, schema)
    names = [r.name for r in app.reactions]
    with pool.connection() as conn, conn.transaction():
        for name in names:
            Tracking(schema).set(conn, name, head)
    with FakeGateway(decline_over=GATEWAY_LIMIT) as gateway:
        gateway.failing = True
        reactions = Runtime(app, settings, {"PAYMENT_GATEWAY_URL": gateway.url})
        runtime = reaction_runtime(
            [reactions.construct(r) for r in app.reactions],
            settings,
            worker_id="demo",
            worker_threads=4,
            broker_options=BrokerOptions(poll_interval_s=0.05),
        )
        stop = threading.Event()
        runner = threading.Thread(target=runtime.run, args=(stop,), name="demo-reactions")
        runner.start()
        try:
            orders = _place_reaction_orders(shop)
            print(
                f"  {len(orders)} orders placed; the gateway answers 503 to every charge, so "
                f"each is tried {ChargePayments.max_attempts} times with backoff, then parked:"
            )
            parked = _wait(
                lambda: _open_letters(pool, schema, ChargePayments.name) >= len(orders), 60
            )
            print(f"  gateway calls so far: {gateway.failed_calls()} answered 503")
            with _cli_env(url, schema):
                _eventkit("status", *names)
                gateway.failing = False
                print("  the gateway is back; the operator retries the parked messages:")
                code = _eventkit(
                    "dlq", "retry", "--consumer", ChargePayments.name, "--timeout", "60"
                )
                mailed = _wait(lambda: _mails(pool, schema) >= len(orders), 60)
                _eventkit("status", *names)
        finally:
            stop.set()
            runner.join(timeout=60)
        statuses = Counter(shop.get_order(o).status.value for o in orders)
        keys = gateway.keys_per_payment()
        one_key_each = all(len(k) == 1 for k in keys.values()) and len(keys) == len(orders)
        print(
            f"  orders now: {', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}; "
            f"{_mails(pool, schema)} mails written, one per order; the gateway charged "
            f"{len(keys)} payments, "
            + ("each with one key" if one_key_each else "NOT one key each")
        )
    return (
        parked
        and code == 0
        and mailed
        and one_key_each
        and sum(statuses.values()) == len(orders)
        and set(statuses) <= {"shipped", "cancelled"}
    )


def _place_reaction_orders(shop: Shop) -> list[UUID]:
    rng = random.Random(7)
    orders = []
    skus = [sku for sku, *_ in CATALOGUE if not sku.startswith("LTD-")]
    for i in range(REACTION_ORDERS):
        try:
            placed = shop.place_order(
                PlaceOrder(
                    customer_id=f"reaction-{i}",
                    lines=(OrderLineRequest(sku=rng.choice(skus), quantity=rng.randint(1, 3)),),
                )
            )
        except DomainError:
            continue  # out of stock after the writers: not placed
        orders.append(placed.order_id)
    return orders


def _open_letters(pool: psycopg_pool.ConnectionPool, schema: str, name: str) -> int:
    with pool.connection() as conn:
        return len(DeadLetters(schema).select(conn, projection=name, statuses=("parked",)))


def _mails(pool: psycopg_pool.ConnectionPool, schema: str) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "order_mails"))
        ).fetchone()
    return 0 if row is None else int(row[0])


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            print(f"  NOT done within {timeout:.0f} s")
            return False
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def _cli_env(url: str, schema: str) -> Iterator[None]:
    """Point in-process ``eventkit`` commands at the demo's database and schema."""
    saved = {name: os.environ.get(name) for name in ("DATABASE_URL", "EVENTKIT_SCHEMA")}
    os.environ.update(DATABASE_URL=url, EVENTKIT_SCHEMA=schema)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _eventkit(*argv: str) -> int:
    """Run an ``eventkit`` command in this process; print it and its output, indented."""
    from eventkit.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--app", "eventkit.projections.shop:app", *argv])
    print(f"  $ eventkit {' '.join(argv)}")
    print(textwrap.indent(out.getvalue().rstrip(), "    "))
    return code


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


if __name__ == "__main__":
    sys.exit(main())

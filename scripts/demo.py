"""``eventkit demo``: the example shop under a realistic workload.

Registers a catalogue, receives stock, then runs concurrent writer threads that place
orders, capture or fail payments, cancel and ship orders, restock, and now and then send a
command that must be rejected (bad data, unknown sku, not enough stock, illegal transition).
Every run records into a fresh schema, so runs never mix; the schema is kept so that the
events can be read in SQL afterwards. Prints what was written, read back from the database.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg_pool
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic
from psycopg import sql

from domain.application import OrderPlacement, Shop
from domain.commands import (
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
from domain.errors import DomainError
from domain.stock import StockItem
from infrastructure.factory import shared_pool
from infrastructure.settings import redact
from scripts.bootstrap import application_env, settings_with

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


def register(commands: Any) -> None:
    parser = commands.add_parser("demo", help="run the example shop through a workload")
    parser.add_argument("--writers", type=_positive, default=8, help="writer threads (8)")
    parser.add_argument("--orders", type=_positive, default=3000, help="orders to place (3000)")
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="random seed of the workload (1); thread timing still varies",
    )
    parser.set_defaults(run=run)


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


class DemoShop(Shop):
    """The shop, counting the concurrency conflicts it retries."""

    name = "Shop"

    def __init__(self, env: dict[str, str], tally: Tally) -> None:
        super().__init__(env=env)
        self.tally = tally

    def after_conflict(self, command: Command, attempt: int, error: IntegrityError) -> None:
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
    settings = dataclasses.replace(base, pool_max_size=max(base.pool_max_size, args.writers + 2))
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
        started = time.perf_counter()
        units = _stock_up(shop, args.orders)
        print(
            f"\nsetup: {len(CATALOGUE)} stock items registered, {units:,} units received "
            f"({time.perf_counter() - started:.1f} s)"
        )
        before = _count(pool, schema).events
        started = time.perf_counter()
        _run_writers(shop, tally, args)
        wall = time.perf_counter() - started
        _print_commands(tally, args, wall)
        _print_rejections(tally, shop.max_attempts)
        _print_events(_count(pool, schema), before, wall)
        is_sound = _check_stock(shop, pool, schema)
    finally:
        shop.close()
    print(f"\nthe data lives in schema {schema} at {redact(url)}; look at it in SQL:")
    query = f"SELECT topic, state FROM {schema}.stored_events_json LIMIT 5"
    print(f"  {query};")
    print(f"  from a shell: psql \"$(eventkit db url)\" -c '{query}'")
    print(f"  drop it when done: DROP SCHEMA {schema} CASCADE;")
    return 0 if is_sound else 1


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


def _run_writers(shop: Shop, tally: Tally, args: argparse.Namespace) -> None:
    shares = [args.orders // args.writers] * args.writers
    for i in range(args.orders % args.writers):
        shares[i] += 1
    writers = [
        Writer(shop, tally, share, random.Random(args.seed * 1000 + i))
        for i, share in enumerate(shares)
    ]
    with ThreadPoolExecutor(max_workers=args.writers, thread_name_prefix="writer") as executor:
        for future in [executor.submit(writer) for writer in writers]:
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
        name: get_topic(event_class)
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
            query, {**topics, "stock_topics": get_topic(StockItem) + ".%"}
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

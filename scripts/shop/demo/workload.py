"""The workload: writer threads that place orders and move them along, and their tally.

Each writer places its share of orders and interleaves the later steps of the orders it
has in flight (capture or fail the payment, cancel, ship), restocks now and then, and
sends a command that must be rejected (bad data, unknown sku, not enough stock, an illegal
transition) often enough for every kind of rejection to show.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from eventsourcing.persistence import IntegrityError

from eventkit.domain.shop.application import OrderPlacement, Shop
from eventkit.domain.shop.commands import (
    CancelOrder,
    CapturePayment,
    Command,
    FailPayment,
    OrderLineRequest,
    PlaceOrder,
    ReceiveStock,
    ShipOrder,
    parse_command,
)
from eventkit.domain.shop.errors import DomainError
from eventkit.shop.demo.catalogue import CATALOGUE, LINES, UNITS

#: How often the writers' caller is told they are still running.
TICK_S = 0.25


class Tally:
    """Accepted and rejected commands, rejection examples, conflicts and orders finished,
    across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.examples: defaultdict[str, list[str]] = defaultdict(list)
        self.conflicts = 0
        self.gave_up = 0
        self.finished = 0

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

    def finish(self) -> None:
        """Count an order that has no step left: rejected when placed, or through its plan."""
        with self._lock:
            self.finished += 1


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

    def __init__(
        self,
        shop: Shop,
        tally: Tally,
        orders: int,
        rng: random.Random,
        stop: threading.Event,
    ) -> None:
        self.shop = shop
        self.tally = tally
        self.orders = orders
        self.rng = rng
        self.stop = stop
        self.in_flight: list[tuple[OrderPlacement, list[str]]] = []
        self.skus = [sku for sku, *_ in CATALOGUE]
        self.weights = [weight for *_, weight in CATALOGUE]

    def __call__(self) -> None:
        placed = 0
        while (placed < self.orders or self.in_flight) and not self.stop.is_set():
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
        count = self.rng.choices(*LINES)[0]
        skus = set(self.rng.choices(self.skus, self.weights, k=count))
        if roll > 0.99:
            skus.add("NO-SUCH-SKU")  # rejected: UnknownStockItemError
        lines = tuple(
            OrderLineRequest(sku=sku, quantity=self.rng.choices(*UNITS)[0]) for sku in sorted(skus)
        )
        command = PlaceOrder(customer_id=f"customer-{self.rng.randrange(500)}", lines=lines)
        placement = self.tally.run("PlaceOrder", lambda: self.shop.place_order(command))
        if placement is None:
            self.tally.finish()
        else:
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
        else:
            self.tally.finish()

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


def run_writers(
    shop: Shop, tally: Tally, *, writers: int, orders: int, seed: int, tick: Callable[[], None]
) -> None:
    """Run the writer threads to the end, calling ``tick`` every :data:`TICK_S` meanwhile."""
    shares = [orders // writers] * writers
    for i in range(orders % writers):
        shares[i] += 1
    stop = threading.Event()
    threads = [
        Writer(shop, tally, share, random.Random(seed * 1000 + i), stop)
        for i, share in enumerate(shares)
    ]
    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="writer") as executor:
        futures = [executor.submit(writer) for writer in threads]
        try:
            while True:
                done, pending = wait(futures, timeout=TICK_S, return_when=FIRST_EXCEPTION)
                if not pending or any(f.exception() is not None for f in done):
                    break
                tick()
        finally:
            # After Ctrl-C or a writer's error, the others stop after the command in hand
            # instead of writing all their orders before the pool's exit lets go.
            stop.set()
        for future in futures:
            future.result()  # a writer's unexpected error ends the demo with it

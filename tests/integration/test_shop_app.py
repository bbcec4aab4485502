"""The Shop on a real PostgreSQL: atomic saves, notification ids, and concurrent writers.

Each test records into a schema of its own (the ``app_env`` fixture).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, TypeVar

import psycopg_pool
import pytest
from eventsourcing.persistence import IntegrityError
from psycopg import sql

from eventkit.domain.shop.application import OrderPlacement, Shop
from eventkit.domain.shop.commands import (
    CapturePayment,
    OrderLineRequest,
    PlaceOrder,
    ReceiveStock,
    RegisterStockItem,
    ShipOrder,
)
from eventkit.domain.shop.errors import InsufficientStockError
from eventkit.domain.shop.orders import OrderStatus
from eventkit.infrastructure.factory import event_recorder
from eventkit.infrastructure.log import Position

S = TypeVar("S", bound=Shop)


class LockstepShop(Shop):
    """A shop whose writers all wait, loaded, at a barrier before their first save.

    So every writer decides on the same version of the stock item and all but one of them
    must conflict, retry on fresh aggregates, and decide again. Armed by :meth:`arm`, after
    the stock item has been set up.
    """

    barrier: threading.Barrier | None = None

    def arm(self, writers: int) -> LockstepShop:
        self.barrier = threading.Barrier(writers, timeout=30)
        self.first_save = threading.local()
        return self

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        if self.barrier is not None and not getattr(self.first_save, "done", False):
            self.first_save.done = True
            self.barrier.wait()
        return super().save(*objs, **kwargs)


def stocked(shop: S, on_hand: int) -> S:
    shop.register_stock_item(
        RegisterStockItem(sku="TEA-GREEN", name="Green tea", unit_price=Decimal("6.90"))
    )
    shop.receive_stock(ReceiveStock(sku="TEA-GREEN", quantity=on_hand))
    return shop


def order(quantity: int, customer_id: str = "customer-1") -> PlaceOrder:
    return PlaceOrder(
        customer_id=customer_id, lines=(OrderLineRequest(sku="TEA-GREEN", quantity=quantity),)
    )


def concurrently(*actions: Callable[[], Any]) -> list[Any]:
    """Run the actions in threads at once; return each one's result or exception."""

    def outcome(action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as e:
            return e

    with ThreadPoolExecutor(max_workers=len(actions)) as executor:
        return list(executor.map(outcome, actions))


def count_rows(pool: psycopg_pool.ConnectionPool, schema: str) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "stored_events"))
        ).fetchone()
    assert row is not None
    count: int = row[0]
    return count


@pytest.fixture
def shop(app_env: dict[str, str]) -> Iterator[Shop]:
    shop = stocked(Shop(env=app_env), on_hand=10)
    yield shop
    shop.close()


def test_place_pay_and_ship_an_order(shop: Shop) -> None:
    recorder = event_recorder(shop)

    placed = shop.place_order(order(3))
    assert placed.notification_id == recorder.max_notification_id()
    paid = shop.capture_payment(CapturePayment(payment_id=placed.payment_id))
    assert paid.notification_id == recorder.max_notification_id()
    shipped = shop.ship_order(ShipOrder(order_id=placed.order_id))
    assert shipped.notification_id == recorder.max_notification_id()

    # Readers see a transaction once every older one in the cluster has ended: wait for it.
    deadline = time.monotonic() + 10
    while (log := recorder.read_notifications(Position.ORIGIN, 100))[-1:] and (
        log[-1].id != shipped.notification_id and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert log[-1].id == shipped.notification_id
    assert [n.topic for n in log[2:]] == [
        "Order.Placed",
        "Payment.Requested",
        "StockItem.Reserved",
        "Payment.Captured",
        "Order.Paid",
        "Order.Shipped",
        "StockItem.ReservationCommitted",
    ]
    # Each command's events were written by one transaction: all or nothing.
    assert len({n.transaction_id for n in log[2:5]}) == 1
    assert log[4].id == placed.notification_id
    assert log[6].id == paid.notification_id
    assert shop.get_order(placed.order_id).status is OrderStatus.SHIPPED
    tea = shop.get_stock("TEA-GREEN")
    assert (tea.on_hand, tea.reserved) == (7, 0)


def test_insufficient_stock_writes_nothing(
    shop: Shop, pool: psycopg_pool.ConnectionPool, app_env: dict[str, str]
) -> None:
    shop.place_order(order(8))
    before = (
        event_recorder(shop).max_notification_id(),
        count_rows(pool, app_env["EVENTKIT_SCHEMA"]),
    )

    with pytest.raises(InsufficientStockError, match="requested 3, available 2"):
        shop.place_order(order(3))

    after = (
        event_recorder(shop).max_notification_id(),
        count_rows(pool, app_env["EVENTKIT_SCHEMA"]),
    )
    assert after == before


def test_two_writers_on_one_stock_item_both_succeed_through_a_retry(
    app_env: dict[str, str],
) -> None:
    shop = stocked(LockstepShop(env=app_env), on_hand=10)
    shop.arm(writers=2)

    results = concurrently(
        lambda: shop.place_order(order(4, "customer-1")),
        lambda: shop.place_order(order(5, "customer-2")),
    )

    assert all(isinstance(result, OrderPlacement) for result in results), results
    assert sorted(result.retries for result in results) == [0, 1]
    tea = shop.get_stock("TEA-GREEN")
    assert (tea.on_hand, tea.reserved, tea.available) == (10, 9, 1)
    shop.close()


def test_two_writers_for_the_last_units_one_fails_cleanly(app_env: dict[str, str]) -> None:
    shop = stocked(LockstepShop(env=app_env), on_hand=10)
    shop.arm(writers=2)

    results = concurrently(
        lambda: shop.place_order(order(6, "customer-1")),
        lambda: shop.place_order(order(6, "customer-2")),
    )

    placed = [r for r in results if isinstance(r, OrderPlacement)]
    refused = [r for r in results if isinstance(r, InsufficientStockError)]
    assert (len(placed), len(refused)) == (1, 1), results
    assert (refused[0].requested, refused[0].available) == (6, 4)
    tea = shop.get_stock("TEA-GREEN")
    assert (tea.on_hand, tea.reserved) == (10, 6)
    shop.close()


def test_many_writers_never_oversell(
    app_env: dict[str, str], pool: psycopg_pool.ConnectionPool
) -> None:
    shop = stocked(Shop(env=app_env), on_hand=100)
    writers, orders_each = 8, 12

    def writer(n: int) -> list[Any]:
        outcomes: list[Any] = []
        for i in range(orders_each):
            try:
                outcomes.append(shop.place_order(order(1 + (n + i) % 3, f"customer-{n}")))
            except (InsufficientStockError, IntegrityError) as e:
                outcomes.append(e)
        return outcomes

    results = [
        r for rs in concurrently(*(lambda n=n: writer(n) for n in range(writers))) for r in rs
    ]

    placed = [r for r in results if isinstance(r, OrderPlacement)]
    assert all(
        isinstance(r, OrderPlacement | InsufficientStockError | IntegrityError) for r in results
    )
    assert len(results) == writers * orders_each
    ordered = sum(shop.get_order(p.order_id).lines[0].quantity for p in placed)
    tea = shop.get_stock("TEA-GREEN")
    assert tea.reserved == ordered <= tea.on_hand == 100
    # A fresh shop, which replays the whole stream, agrees with the one that cached it.
    fresh = Shop(env=app_env)
    assert fresh.get_stock("TEA-GREEN") == tea
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE topic = 'StockItem.Reserved'").format(
                sql.Identifier(app_env["EVENTKIT_SCHEMA"], "stored_events")
            )
        ).fetchone()
    assert row is not None
    assert row[0] == len(placed)
    shop.close()
    fresh.close()

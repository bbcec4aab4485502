"""The Shop application service, on eventsourcing's in-memory recorder with eventkit's mapper.

Every event goes through the mapper on its way in and out, so these tests also check that
what the shop records decodes to what it decided.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any, TypeVar
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError

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
)
from eventkit.domain.shop.errors import (
    IllegalTransitionError,
    InsufficientStockError,
    StockItemAlreadyRegisteredError,
    UnknownOrderError,
    UnknownPaymentError,
    UnknownStockItemError,
)
from eventkit.domain.shop.orders import Currency, OrderStatus
from eventkit.domain.shop.payments import Payment, PaymentStatus
from eventkit.domain.shop.stock import StockItem

S = TypeVar("S", bound=Shop)


class RacingShop(Shop):
    """A shop in which another writer receives TEA-GREEN between a command's load and save."""

    retry_delay = 0.0

    def __init__(self, env: dict[str, str], races: int) -> None:
        super().__init__(env=env)
        self.races = races
        self.conflicts: list[tuple[str, int]] = []

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        if self.races:
            self.races -= 1
            rival: StockItem = self.repository.get(StockItem.id_for("TEA-GREEN"))
            rival.receive(1)
            super().save(rival)
        return super().save(*objs, **kwargs)

    def after_conflict(self, command: Command, attempt: int, error: IntegrityError) -> None:
        self.conflicts.append((type(command).__name__, attempt))


def stocked(shop: S, **on_hand: int) -> S:
    """Register TEA-GREEN (6.90) and MUG-WHITE (12.00) and receive ``on_hand`` of each."""
    for sku, name, price in (("TEA-GREEN", "Green tea", "6.90"), ("MUG-WHITE", "Mug", "12.00")):
        shop.register_stock_item(RegisterStockItem(sku=sku, name=name, unit_price=Decimal(price)))
        quantity = on_hand.get(sku.replace("-", "_").lower(), 10)
        shop.receive_stock(ReceiveStock(sku=sku, quantity=quantity))
    return shop


@pytest.fixture
def shop(eventkit_memory_env: dict[str, str]) -> Iterator[Shop]:
    shop = stocked(Shop(env=eventkit_memory_env))
    yield shop
    shop.close()


def order(**quantities: int) -> PlaceOrder:
    lines = tuple(
        OrderLineRequest(sku=sku.replace("_", "-").upper(), quantity=quantity)
        for sku, quantity in quantities.items()
    )
    return PlaceOrder(customer_id="customer-1", lines=lines)


def last_id(shop: Shop) -> int | None:
    return shop.recorder.max_notification_id()


def topics(shop: Shop, after: int) -> list[str]:
    notifications = shop.recorder.select_notifications(start=after + 1, limit=100)
    return [n.topic for n in notifications]


def test_register_stock_item_records_registered(shop: Shop) -> None:
    result = shop.register_stock_item(
        RegisterStockItem(sku="POT-1L", name="Teapot", unit_price=Decimal("29.90"))
    )

    assert result == CommandResult(
        notification_id=5, aggregate_ids=(StockItem.id_for("POT-1L"),), retries=0
    )
    view = shop.get_stock("POT-1L")
    assert (view.sku, view.name, view.unit_price, view.on_hand, view.version) == (
        "POT-1L",
        "Teapot",
        Decimal("29.90"),
        0,
        1,
    )


def test_registering_a_sku_twice_fails_and_writes_nothing(shop: Shop) -> None:
    before = last_id(shop)

    with pytest.raises(StockItemAlreadyRegisteredError, match="'TEA-GREEN' is already registered"):
        shop.register_stock_item(
            RegisterStockItem(sku="TEA-GREEN", name="Other", unit_price=Decimal("1.00"))
        )

    assert last_id(shop) == before
    assert shop.get_stock("TEA-GREEN").name == "Green tea"


def test_receive_stock_of_an_unknown_sku_fails(shop: Shop) -> None:
    with pytest.raises(UnknownStockItemError, match="'NO-SUCH'"):
        shop.receive_stock(ReceiveStock(sku="NO-SUCH", quantity=1))


def test_place_order_records_order_payment_and_reservations_in_one_save(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = last_id(shop)
    assert before is not None
    appends: list[int] = []
    insert_events = shop.recorder.insert_events

    def counting_insert_events(stored_events: Any, **kwargs: Any) -> Any:
        appends.append(len(stored_events))
        return insert_events(stored_events, **kwargs)

    monkeypatch.setattr(shop.recorder, "insert_events", counting_insert_events)

    result = shop.place_order(order(tea_green=3, mug_white=1))

    assert appends == [4]
    assert isinstance(result, OrderPlacement)
    assert result.notification_id == last_id(shop) == before + 4
    assert result.payment_id == Payment.id_for(result.order_id)
    assert result.aggregate_ids == (
        result.order_id,
        result.payment_id,
        StockItem.id_for("TEA-GREEN"),
        StockItem.id_for("MUG-WHITE"),
    )
    assert topics(shop, before) == [
        "Order.Placed",
        "Payment.Requested",
        "StockItem.Reserved",
        "StockItem.Reserved",
    ]
    placed = shop.get_order(result.order_id)
    assert (placed.status, placed.total, placed.currency) == (
        OrderStatus.PLACED,
        Decimal("32.70"),
        Currency.EUR,
    )
    assert [(line.sku, line.quantity, line.unit_price) for line in placed.lines] == [
        ("TEA-GREEN", 3, Decimal("6.90")),
        ("MUG-WHITE", 1, Decimal("12.00")),
    ]
    payment = shop.get_payment(result.payment_id)
    assert (payment.order_id, payment.amount, payment.status) == (
        result.order_id,
        Decimal("32.70"),
        PaymentStatus.REQUESTED,
    )
    tea = shop.get_stock("TEA-GREEN")
    assert (tea.on_hand, tea.reserved, tea.available) == (10, 3, 7)


def test_insufficient_stock_on_any_line_writes_nothing(shop: Shop) -> None:
    before = last_id(shop)

    with pytest.raises(InsufficientStockError) as raised:
        shop.place_order(order(tea_green=3, mug_white=11))

    assert (raised.value.sku, raised.value.requested, raised.value.available) == (
        "MUG-WHITE",
        11,
        10,
    )
    assert last_id(shop) == before
    assert shop.get_stock("TEA-GREEN").reserved == 0  # the first line's reservation is gone


def test_an_unknown_sku_writes_nothing(shop: Shop) -> None:
    before = last_id(shop)

    with pytest.raises(UnknownStockItemError, match="'NO-SUCH'"):
        shop.place_order(order(tea_green=1, no_such=1))

    assert last_id(shop) == before


def test_capture_payment_marks_the_order_paid(shop: Shop) -> None:
    placed = shop.place_order(order(tea_green=2))
    before = last_id(shop)
    assert before is not None

    result = shop.capture_payment(CapturePayment(payment_id=placed.payment_id))

    assert result.notification_id == last_id(shop) == before + 2
    assert topics(shop, before) == ["Payment.Captured", "Order.Paid"]
    assert shop.get_payment(placed.payment_id).status is PaymentStatus.CAPTURED
    assert shop.get_order(placed.order_id).status is OrderStatus.PAID


def test_ship_order_takes_the_reserved_units_off_hand(shop: Shop) -> None:
    placed = shop.place_order(order(tea_green=2, mug_white=1))
    shop.capture_payment(CapturePayment(payment_id=placed.payment_id))
    before = last_id(shop)
    assert before is not None

    result = shop.ship_order(ShipOrder(order_id=placed.order_id))

    assert result.notification_id == last_id(shop) == before + 3
    assert topics(shop, before) == [
        "Order.Shipped",
        "StockItem.ReservationCommitted",
        "StockItem.ReservationCommitted",
    ]
    assert shop.get_order(placed.order_id).status is OrderStatus.SHIPPED
    tea = shop.get_stock("TEA-GREEN")
    assert (tea.on_hand, tea.reserved, tea.available) == (8, 0, 8)


def test_fail_payment_cancels_the_order_and_releases_its_stock(shop: Shop) -> None:
    placed = shop.place_order(order(tea_green=2, mug_white=1))
    before = last_id(shop)
    assert before is not None

    shop.fail_payment(FailPayment(payment_id=placed.payment_id, reason="card declined"))

    assert topics(shop, before) == [
        "Payment.Failed",
        "Order.Cancelled",
        "StockItem.Released",
        "StockItem.Released",
    ]
    cancelled = shop.get_order(placed.order_id)
    assert (cancelled.status, cancelled.cancellation_reason) == (
        OrderStatus.CANCELLED,
        "payment failed: card declined",
    )
    assert shop.get_stock("TEA-GREEN").available == 10


def test_cancel_order_fails_its_payment_and_releases_its_stock(shop: Shop) -> None:
    placed = shop.place_order(order(tea_green=2))

    shop.cancel_order(CancelOrder(order_id=placed.order_id, reason="changed my mind"))

    assert shop.get_order(placed.order_id).status is OrderStatus.CANCELLED
    payment = shop.get_payment(placed.payment_id)
    assert (payment.status, payment.failure_reason) == (
        PaymentStatus.FAILED,
        "order cancelled: changed my mind",
    )
    assert shop.get_stock("TEA-GREEN").available == 10


@pytest.mark.parametrize(
    ("steps", "command", "message"),
    [
        ((), "ship", "cannot ship order .*: it is placed"),
        (("capture",), "cancel", "cannot cancel order .*: it is paid"),
        (("capture", "ship"), "cancel", "cannot cancel order .*: it is shipped"),
        (("cancel",), "capture", "cannot capture payment .*: it is failed"),
        (("fail",), "capture", "cannot capture payment .*: it is failed"),
        (("capture",), "fail", "cannot fail payment .*: it is captured"),
    ],
)
def test_an_illegal_transition_writes_nothing(
    shop: Shop, steps: tuple[str, ...], command: str, message: str
) -> None:
    placed = shop.place_order(order(tea_green=2))
    commands = {
        "capture": lambda: shop.capture_payment(CapturePayment(payment_id=placed.payment_id)),
        "fail": lambda: shop.fail_payment(FailPayment(payment_id=placed.payment_id, reason="no")),
        "ship": lambda: shop.ship_order(ShipOrder(order_id=placed.order_id)),
        "cancel": lambda: shop.cancel_order(CancelOrder(order_id=placed.order_id, reason="no")),
    }
    for step in steps:
        commands[step]()
    before = last_id(shop)
    order_before, stock_before = shop.get_order(placed.order_id), shop.get_stock("TEA-GREEN")

    with pytest.raises(IllegalTransitionError, match=message):
        commands[command]()

    assert last_id(shop) == before
    assert shop.get_order(placed.order_id) == order_before
    assert shop.get_stock("TEA-GREEN") == stock_before


def test_unknown_ids_fail(shop: Shop) -> None:
    placed = shop.place_order(order(tea_green=1))
    missing = uuid4()

    with pytest.raises(UnknownOrderError, match=str(missing)):
        shop.ship_order(ShipOrder(order_id=missing))
    with pytest.raises(UnknownPaymentError, match=str(missing)):
        shop.capture_payment(CapturePayment(payment_id=missing))
    with pytest.raises(UnknownOrderError):  # a payment's id is not an order's
        shop.get_order(placed.payment_id)
    with pytest.raises(UnknownPaymentError):
        shop.get_payment(placed.order_id)
    with pytest.raises(UnknownStockItemError):
        shop.get_stock("NO-SUCH")


def test_a_conflicting_save_is_retried_on_fresh_aggregates(
    eventkit_memory_env: dict[str, str],
) -> None:
    shop = stocked(RacingShop(env=eventkit_memory_env, races=0), tea_green=5)
    shop.races = 2
    before = last_id(shop)
    assert before is not None

    result = shop.place_order(order(tea_green=5))

    assert result.retries == 2
    assert shop.conflicts == [("PlaceOrder", 1), ("PlaceOrder", 2)]
    assert topics(shop, before) == [
        "StockItem.Received",
        "StockItem.Received",
        "Order.Placed",
        "Payment.Requested",
        "StockItem.Reserved",
    ]
    assert result.notification_id == last_id(shop)
    tea = shop.get_stock("TEA-GREEN")
    assert (tea.on_hand, tea.reserved) == (7, 5)  # the rival's receipts are kept


def test_a_command_gives_up_after_max_attempts(eventkit_memory_env: dict[str, str]) -> None:
    shop = stocked(RacingShop(env=eventkit_memory_env, races=0))
    shop.races = Shop.max_attempts
    before = last_id(shop)
    assert before is not None

    with pytest.raises(IntegrityError):
        shop.place_order(order(tea_green=1))

    assert shop.conflicts == [("PlaceOrder", n) for n in range(1, Shop.max_attempts + 1)]
    assert topics(shop, before) == ["StockItem.Received"] * Shop.max_attempts
    assert shop.get_stock("TEA-GREEN").reserved == 0


def test_loads_see_events_written_past_the_cache(shop: Shop) -> None:
    assert shop.get_stock("TEA-GREEN").on_hand == 10  # now cached
    item: StockItem = shop.repository.get(StockItem.id_for("TEA-GREEN"))
    item.receive(5)
    shop.save(item)

    assert shop.get_stock("TEA-GREEN").on_hand == 15


def test_a_failed_command_leaves_no_trace_in_the_cache(shop: Shop) -> None:
    placed = shop.place_order(order(tea_green=4))
    with pytest.raises(InsufficientStockError):
        shop.place_order(order(mug_white=1, tea_green=7))

    view = shop.get_stock("MUG-WHITE")
    assert (view.reserved, view.version) == (0, 2)
    assert shop.get_stock("TEA-GREEN").reserved == 4
    assert shop.get_order(placed.order_id).status is OrderStatus.PLACED


def test_views_are_frozen(shop: Shop) -> None:
    view = shop.get_stock("TEA-GREEN")

    with pytest.raises(AttributeError):
        view.on_hand = 99  # type: ignore[misc]

"""Order: given its history, when a command, then new events (or an error and none)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

import pytest
from freezegun import freeze_time

from eventkit.domain.shop.errors import (
    IllegalTransitionError,
    InvalidAmountError,
    InvalidOrderLinesError,
    InvalidQuantityError,
)
from eventkit.domain.shop.orders import Currency, Order, OrderLine, OrderStatus

PAYMENT_ID = uuid4()
LINES = (
    OrderLine(sku="TEA-GREEN", quantity=2, unit_price=Decimal("6.90")),
    OrderLine(sku="MUG-WHITE", quantity=1, unit_price=Decimal("12.00")),
)


def given(*steps: str) -> Order:
    """A placed order, taken through ``steps`` ("paid", "cancelled", "shipped")."""
    order = Order.place("customer-1", LINES, Currency.EUR)
    for step in steps:
        if step == "paid":
            order.mark_paid(PAYMENT_ID)
        elif step == "cancelled":
            order.cancel("changed my mind")
        elif step == "shipped":
            order.ship()
    order.collect_events()
    return order


def test_place_emits_placed_with_lines_total_and_currency() -> None:
    with freeze_time("2024-05-01 09:00:00"):
        order = Order.place("customer-1", LINES, Currency.EUR)

    [event] = order.collect_events()
    assert isinstance(event, Order.Placed)
    assert event.customer_id == "customer-1"
    assert event.lines == LINES
    assert event.total == Decimal("25.80")
    assert event.currency is Currency.EUR
    assert event.timestamp == datetime(2024, 5, 1, 9, tzinfo=UTC)
    assert event.originator_version == 1
    assert order.status is OrderStatus.PLACED
    assert order.skus == ("TEA-GREEN", "MUG-WHITE")


def test_place_rejects_an_order_without_lines() -> None:
    with pytest.raises(InvalidOrderLinesError, match="'customer-1' has no lines"):
        Order.place("customer-1", (), Currency.EUR)


def test_place_rejects_a_sku_on_two_lines() -> None:
    lines = (*LINES, OrderLine(sku="TEA-GREEN", quantity=1, unit_price=Decimal("6.90")))

    with pytest.raises(InvalidOrderLinesError, match="TEA-GREEN on more than one line"):
        Order.place("customer-1", lines, Currency.EUR)


def test_place_rejects_a_quantity_below_one() -> None:
    lines = (OrderLine(sku="TEA-GREEN", quantity=0, unit_price=Decimal("6.90")),)

    with pytest.raises(InvalidQuantityError, match=r"'TEA-GREEN': quantity must be .*got 0"):
        Order.place("customer-1", lines, Currency.EUR)


def test_place_rejects_a_unit_price_that_is_not_positive() -> None:
    lines = (OrderLine(sku="TEA-GREEN", quantity=1, unit_price=Decimal("0.00")),)

    with pytest.raises(InvalidAmountError, match=r"'TEA-GREEN'.*got 0\.00"):
        Order.place("customer-1", lines, Currency.EUR)


def test_mark_paid_emits_paid() -> None:
    order = given()

    order.mark_paid(PAYMENT_ID)

    [event] = order.collect_events()
    assert isinstance(event, Order.Paid)
    assert event.payment_id == PAYMENT_ID
    assert (order.status, order.payment_id) == (OrderStatus.PAID, PAYMENT_ID)


def test_cancel_emits_cancelled_with_the_reason() -> None:
    order = given()

    order.cancel("changed my mind")

    [event] = order.collect_events()
    assert isinstance(event, Order.Cancelled)
    assert event.reason == "changed my mind"
    assert (order.status, order.cancellation_reason) == (OrderStatus.CANCELLED, "changed my mind")


def test_ship_emits_shipped() -> None:
    order = given("paid")

    order.ship()

    [event] = order.collect_events()
    assert isinstance(event, Order.Shipped)
    assert order.status is OrderStatus.SHIPPED


@pytest.mark.parametrize(
    ("history", "action", "status"),
    [
        ((), "ship", "placed"),  # cannot ship an unpaid order
        (("cancelled",), "ship", "cancelled"),
        (("paid", "shipped"), "ship", "shipped"),
        (("cancelled",), "pay", "cancelled"),  # cannot pay a cancelled order
        (("paid",), "pay", "paid"),
        (("paid", "shipped"), "pay", "shipped"),
        (("paid",), "cancel", "paid"),  # a paid order would need a refund
        (("paid", "shipped"), "cancel", "shipped"),  # cannot cancel a shipped order
        (("cancelled",), "cancel", "cancelled"),
    ],
)
def test_an_illegal_transition_fails_naming_order_and_status(
    history: tuple[str, ...], action: str, status: str
) -> None:
    order = given(*history)
    command: Callable[[], None] = {
        "ship": order.ship,
        "pay": lambda: order.mark_paid(PAYMENT_ID),
        "cancel": lambda: order.cancel("too late"),
    }[action]

    with pytest.raises(IllegalTransitionError) as raised:
        command()

    error = raised.value
    assert (error.kind, error.aggregate_id, error.action, error.status) == (
        "order",
        order.id,
        action,
        status,
    )
    assert f"cannot {action} order {order.id}: it is {status}" in str(error)
    assert order.collect_events() == []
    assert order.status == status


def test_the_message_says_which_status_is_needed() -> None:
    order = given()

    with pytest.raises(IllegalTransitionError) as raised:
        order.ship()

    assert str(raised.value) == (
        f"cannot ship order {order.id}: it is placed, and only a paid order can be shipped"
    )


def test_replaying_the_events_gives_the_same_state() -> None:
    order = Order.place("customer-1", LINES, Currency.GBP)
    order.mark_paid(PAYMENT_ID)
    order.ship()

    rebuilt: Order | None = None
    for event in order.collect_events():
        rebuilt = event.mutate(rebuilt)

    assert rebuilt is not None
    assert (rebuilt.id, rebuilt.version, rebuilt.status) == (order.id, 3, OrderStatus.SHIPPED)
    assert (rebuilt.lines, rebuilt.total, rebuilt.currency) == (LINES, order.total, Currency.GBP)
    assert rebuilt.payment_id == PAYMENT_ID

"""Order: given its history, when a command, then new events (or an error and none), with
eventkit's harness (eventkit.testing.AggregateScenario)."""

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
from eventkit.testing import AggregateScenario, expect, new_event

PAYMENT_ID = uuid4()
LINES = (
    OrderLine(sku="TEA-GREEN", quantity=2, unit_price=Decimal("6.90")),
    OrderLine(sku="MUG-WHITE", quantity=1, unit_price=Decimal("12.00")),
)
PLACED = new_event(
    Order.Placed,
    customer_id="customer-1",
    lines=LINES,
    total=Decimal("25.80"),
    currency=Currency.EUR,
)
PAID = new_event(Order.Paid, payment_id=PAYMENT_ID)
CANCELLED = new_event(Order.Cancelled, reason="changed my mind")
SHIPPED = new_event(Order.Shipped)
HISTORIES = {"placed": (PLACED,), "paid": (PLACED, PAID), "cancelled": (PLACED, CANCELLED)}
HISTORIES["shipped"] = (*HISTORIES["paid"], SHIPPED)


def test_place_emits_placed_with_lines_total_and_currency() -> None:
    with freeze_time("2024-05-01 09:00:00"):
        scenario = (
            AggregateScenario(Order)
            .when(lambda: Order.place("customer-1", LINES, Currency.EUR))
            .then(
                expect(
                    Order.Placed,
                    customer_id="customer-1",
                    lines=LINES,
                    total=Decimal("25.80"),
                    currency=Currency.EUR,
                    timestamp=datetime(2024, 5, 1, 9, tzinfo=UTC),
                    originator_version=1,
                )
            )
        )

    order = scenario.aggregate
    assert order is not None
    assert order.status is OrderStatus.PLACED
    assert order.skus == ("TEA-GREEN", "MUG-WHITE")


@pytest.mark.parametrize(
    ("lines", "error", "message"),
    [
        ((), InvalidOrderLinesError, "'customer-1' has no lines"),
        ((*LINES, LINES[0]), InvalidOrderLinesError, "TEA-GREEN on more than one line"),
        (
            (OrderLine(sku="TEA-GREEN", quantity=0, unit_price=Decimal("6.90")),),
            InvalidQuantityError,
            r"'TEA-GREEN': quantity must be .*got 0",
        ),
        (
            (OrderLine(sku="TEA-GREEN", quantity=1, unit_price=Decimal("0.00")),),
            InvalidAmountError,
            r"'TEA-GREEN'.*got 0\.00",
        ),
    ],
    ids=["no lines", "a sku on two lines", "a quantity below one", "a price of zero"],
)
def test_place_rejects_bad_lines(
    lines: tuple[OrderLine, ...], error: type[Exception], message: str
) -> None:
    AggregateScenario(Order).when(
        lambda: Order.place("customer-1", lines, Currency.EUR)
    ).then_raises(error, match=message)


def test_mark_paid_emits_paid() -> None:
    scenario = (
        AggregateScenario(Order)
        .given(PLACED)
        .when(lambda order: order.mark_paid(PAYMENT_ID))
        .then(expect(Order.Paid, payment_id=PAYMENT_ID, originator_version=2))
    )

    assert scenario.aggregate is not None
    assert (scenario.aggregate.status, scenario.aggregate.payment_id) == (
        OrderStatus.PAID,
        PAYMENT_ID,
    )


def test_cancel_emits_cancelled_with_the_reason() -> None:
    scenario = (
        AggregateScenario(Order)
        .given(PLACED)
        .when(lambda order: order.cancel("changed my mind"))
        .then(expect(Order.Cancelled, reason="changed my mind"))
    )

    assert scenario.aggregate is not None
    assert scenario.aggregate.cancellation_reason == "changed my mind"


def test_ship_emits_shipped() -> None:
    scenario = (
        AggregateScenario(Order)
        .given(*HISTORIES["paid"])
        .when(lambda order: order.ship())
        .then(expect(Order.Shipped))
    )

    assert scenario.aggregate is not None
    assert scenario.aggregate.status is OrderStatus.SHIPPED


COMMANDS: dict[str, Callable[[Order], None]] = {
    "ship": lambda order: order.ship(),
    "pay": lambda order: order.mark_paid(PAYMENT_ID),
    "cancel": lambda order: order.cancel("too late"),
}


@pytest.mark.parametrize(
    ("status", "action"),
    [
        ("placed", "ship"),  # cannot ship an unpaid order
        ("cancelled", "ship"),
        ("shipped", "ship"),
        ("cancelled", "pay"),  # cannot pay a cancelled order
        ("paid", "pay"),
        ("shipped", "pay"),
        ("paid", "cancel"),  # a paid order would need a refund
        ("shipped", "cancel"),  # cannot cancel a shipped order
        ("cancelled", "cancel"),
    ],
)
def test_an_illegal_transition_fails_naming_order_and_status(status: str, action: str) -> None:
    scenario = AggregateScenario(Order).given(*HISTORIES[status]).when(COMMANDS[action])

    error = scenario.then_raises(IllegalTransitionError)

    order = scenario.aggregate
    assert order is not None
    assert (error.kind, error.aggregate_id, error.action, error.status) == (
        "order",
        order.id,
        action,
        status,
    )
    assert f"cannot {action} order {order.id}: it is {status}" in str(error)
    assert order.status == status


def test_the_message_says_which_status_is_needed() -> None:
    order_id = uuid4()
    AggregateScenario(Order, order_id).given(PLACED).when(lambda order: order.ship()).then_raises(
        IllegalTransitionError,
        match=rf"^cannot ship order {order_id}: it is placed, and only a paid order can be "
        "shipped$",
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

"""The shop's views, with eventkit's harness: given events, then rows (rolled back after)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from freezegun import freeze_time

from eventkit.domain.shop.orders import Currency, Order, OrderLine
from eventkit.domain.shop.stock import StockItem
from eventkit.projections.shop import (
    OrderSummaries,
    OrderSummaryQueries,
    RevenueByDay,
    RevenueQueries,
    StockLevelQueries,
    StockLevels,
)
from eventkit.projections.shop.order_summaries import OutOfOrderError
from eventkit.testing import HandlerFailedError, ProjectionScenario, Transaction, new_event


def placed(order_id: UUID, total: str, customer_id: str = "ada") -> object:
    lines = (OrderLine(sku="TEA-GREEN", quantity=1, unit_price=Decimal(total)),)
    return new_event(
        Order.Placed,
        order_id,
        customer_id=customer_id,
        lines=lines,
        total=Decimal(total),
        currency=Currency.EUR,
    )


def paid(order_id: UUID) -> object:
    return new_event(Order.Paid, order_id, payment_id=uuid4())


def test_revenue_is_counted_on_the_day_of_payment(eventkit_transaction: Transaction) -> None:
    late, unpaid, again = uuid4(), uuid4(), uuid4()
    view = ProjectionScenario(RevenueByDay(), eventkit_transaction)

    with freeze_time("2026-11-27 23:59:30"):
        view.given(placed(late, "5.00"), paid(late), placed(unpaid, "1.25"))
    with freeze_time("2026-11-28 00:00:10"):
        view.given(paid(unpaid), placed(again, "2.50"), paid(again))

    days = view.queries(RevenueQueries).between(date(2026, 11, 1), date(2026, 11, 30))
    assert [(d.day, d.paid_orders, d.revenue) for d in days] == [
        (date(2026, 11, 27), 1, Decimal("5.00")),
        (date(2026, 11, 28), 2, Decimal("3.75")),
    ]


def test_a_payment_of_an_order_never_placed_fails_naming_it(
    eventkit_transaction: Transaction,
) -> None:
    stray = uuid4()
    view = ProjectionScenario(RevenueByDay(), eventkit_transaction)

    with pytest.raises(HandlerFailedError, match=f"order {stray} was paid but never placed"):
        view.given(paid(stray))


def test_an_order_summary_follows_the_order(eventkit_transaction: Transaction) -> None:
    order_id = uuid4()
    view = ProjectionScenario(OrderSummaries(), eventkit_transaction)
    orders = view.queries(OrderSummaryQueries)

    view.given(placed(order_id, "6.90"))
    assert orders.count_by_status() == {"placed": 1}
    view.given(paid(order_id), new_event(Order.Shipped, order_id))

    summary = orders.get(order_id)
    assert summary is not None
    assert (summary.status, summary.total, summary.line_count) == ("shipped", Decimal("6.90"), 1)
    assert [s.order_id for s in orders.for_customer("ada")] == [order_id]


def test_an_order_event_without_its_predecessor_is_refused(
    eventkit_transaction: Transaction,
) -> None:
    view = ProjectionScenario(OrderSummaries(), eventkit_transaction)
    order = Order.place(
        "ada", (OrderLine(sku="TEA", quantity=1, unit_price=Decimal(1)),), Currency.EUR
    )
    order.mark_paid(uuid4())
    [_, paid_event] = order.collect_events()

    with pytest.raises(HandlerFailedError) as raised:
        view.given(paid_event)

    assert isinstance(raised.value.error, OutOfOrderError)
    assert f"order {order.id}: Order.Paid at version 2 does not follow" in str(raised.value)
    assert view.rows("order_summaries") == []


def test_stock_levels_count_reservations(eventkit_transaction: Transaction) -> None:
    order_id = uuid4()
    item = StockItem.register("TEA-GREEN", "Green tea", Decimal("6.90"))
    item.receive(10)
    item.reserve(order_id, 4)
    view = ProjectionScenario(StockLevels(), eventkit_transaction).given(item)

    level = view.queries(StockLevelQueries).get("TEA-GREEN")
    assert level is not None
    assert (level.on_hand, level.reserved, level.available) == (10, 4, 6)

    item.commit_reservation(order_id)
    view.given(item)

    assert view.rows("stock_levels", columns=["on_hand", "reserved", "version"]) == [
        {"on_hand": 6, "reserved": 0, "version": 4}
    ]

"""Read models: query results from the shop's views, checked against the event store,
and read-your-writes (a query that waits for a command's own events)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg_pool

from eventkit.domain.names import EVENT_TYPES
from eventkit.domain.shop.application import CommandResult, Shop
from eventkit.domain.shop.commands import CapturePayment, OrderLineRequest, PlaceOrder
from eventkit.domain.shop.orders import Order
from eventkit.projections.shop import OrderSummaryQueries, RevenueQueries, StockLevelQueries
from eventkit.shop.demo.catalogue import CATALOGUE
from eventkit.shop.demo.summary import count

#: The order events whose counts in the log the demo checks against the views.
_ORDER_EVENTS = (Order.Placed, Order.Paid, Order.Shipped, Order.Cancelled)


def show_read_models(shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str) -> bool:
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

    per_type = dict(count(pool, schema).per_type)
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


def read_your_writes(shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str) -> None:
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

"""RevenueByDay counts each paid order on the day its payment was recorded."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import psycopg_pool
from freezegun import freeze_time

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import CapturePayment, OrderLineRequest, PlaceOrder
from eventkit.projections.shop import RevenueByDay, RevenueQueries
from tests.integration.projection_support import (
    SKUS,
    make_worker,
    running,
    settings_for,
    stock_up,
    wait_until_caught_up,
)


def test_revenue_is_counted_on_the_day_of_payment(
    app_env: dict[str, str], database_url: str, schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    shop = Shop(env=app_env)
    stock_up(shop)  # unit price 1.25
    # Freeze time only while commands make events: the worker's waits need a real clock.
    with freeze_time("2026-11-27 23:59:30"):
        late = shop.place_order(
            PlaceOrder(customer_id="a", lines=(OrderLineRequest(sku=SKUS[0], quantity=4),))
        )
        shop.capture_payment(CapturePayment(payment_id=late.payment_id))  # 5.00 on the 27th
        unpaid = shop.place_order(
            PlaceOrder(customer_id="b", lines=(OrderLineRequest(sku=SKUS[1], quantity=1),))
        )
    with freeze_time("2026-11-28 00:00:10"):
        shop.capture_payment(CapturePayment(payment_id=unpaid.payment_id))  # 1.25 on the 28th
        again = shop.place_order(
            PlaceOrder(customer_id="c", lines=(OrderLineRequest(sku=SKUS[2], quantity=2),))
        )
        shop.capture_payment(CapturePayment(payment_id=again.payment_id))  # 2.50 on the 28th

    with running(make_worker(RevenueByDay(), settings_for(database_url, schema))):
        wait_until_caught_up(pool, schema, "revenue_by_day")
    days = RevenueQueries(pool, schema).between(date(2026, 11, 1), date(2026, 11, 30))
    assert [(d.day, d.paid_orders, d.revenue) for d in days] == [
        (date(2026, 11, 27), 1, Decimal("5.00")),
        (date(2026, 11, 28), 2, Decimal("3.75")),
    ]

"""RevenueByDay: paid orders and revenue per day and currency.

It consumes the same ``Order.Placed`` and ``Order.Paid`` events as OrderSummaries,
independently. The day is that of the ``Order.Paid`` event's time (its ``timestamp``, set
when the event happened), so a replay gives the same days as the live run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date
from decimal import Decimal

from eventkit.domain.shop.orders import Order
from eventkit.projections.projection import Context, Projection, Table, handles
from eventkit.projections.queries import Queries


class RevenueByDay(Projection):
    name = "revenue_by_day"
    tables = (
        Table(
            "revenue_order_totals",
            "CREATE TABLE {table} (order_id uuid PRIMARY KEY, total numeric NOT NULL,"
            " currency text NOT NULL)",
        ),
        Table(
            "revenue_by_day",
            "CREATE TABLE {table} (day date NOT NULL, currency text NOT NULL,"
            " paid_orders integer NOT NULL, revenue numeric NOT NULL,"
            " PRIMARY KEY (day, currency))",
        ),
    )

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        context.execute(
            "INSERT INTO {revenue_order_totals} (order_id, total, currency) VALUES (%s, %s, %s)",
            (event.originator_id, event.total, event.currency.value),
        )

    @handles
    def paid(self, event: Order.Paid, context: Context) -> None:
        day = event.timestamp.astimezone(UTC).date()
        context.execute(
            "INSERT INTO {revenue_by_day} AS r (day, currency, paid_orders, revenue)"
            " SELECT %s, currency, 1, total FROM {revenue_order_totals} WHERE order_id = %s"
            " ON CONFLICT (day, currency) DO UPDATE SET"
            " paid_orders = r.paid_orders + 1, revenue = r.revenue + excluded.revenue",
            (day, event.originator_id),
            expect_rows=1,
            otherwise=lambda _: LookupError(
                f"order {event.originator_id} was paid but never placed"
            ),
        )


@dataclass(frozen=True)
class DailyRevenue:
    day: date
    currency: str
    paid_orders: int
    revenue: Decimal


class RevenueQueries(Queries):
    """Revenue per day."""

    projection = RevenueByDay

    def between(
        self, first: date, last: date, *, wait_for: int | None = None
    ) -> list[DailyRevenue]:
        rows = self.fetch(
            "SELECT day, currency, paid_orders, revenue FROM {revenue_by_day}"
            " WHERE day BETWEEN %s AND %s ORDER BY day, currency",
            (first, last),
            wait_for=wait_for,
        )
        return [DailyRevenue(*r) for r in rows]

    def total(self) -> dict[str, Decimal]:
        rows = self.fetch(
            "SELECT currency, sum(revenue) FROM {revenue_by_day} GROUP BY currency ORDER BY 1"
        )
        return {r[0]: r[1] for r in rows}

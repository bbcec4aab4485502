"""OrderSummaries: one row per order, with its status, for listing and looking up orders."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from eventkit.domain.shop.orders import Order
from eventkit.projections.projection import Context, Projection, Table, handles
from eventkit.projections.queries import Queries


class OrderSummaries(Projection):
    name = "order_summaries"
    tables = (
        Table(
            "order_summaries",
            "CREATE TABLE {table} ("
            " order_id uuid PRIMARY KEY,"
            " customer_id text NOT NULL,"
            " status text NOT NULL,"
            " total numeric NOT NULL,"
            " currency text NOT NULL,"
            " line_count integer NOT NULL,"
            " placed_at timestamptz NOT NULL,"
            " updated_at timestamptz NOT NULL,"
            " version bigint NOT NULL,"
            " cancellation_reason text);"
            "CREATE INDEX ON {table} (customer_id);",
        ),
    )

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        context.execute(
            "INSERT INTO {order_summaries} (order_id, customer_id, status, total, currency,"
            " line_count, placed_at, updated_at, version)"
            " VALUES (%s, %s, 'placed', %s, %s, %s, %s, %s, %s)",
            (
                event.originator_id,
                event.customer_id,
                event.total,
                event.currency.value,
                len(event.lines),
                event.timestamp,
                event.timestamp,
                event.originator_version,
            ),
        )

    @handles
    def paid(self, event: Order.Paid, context: Context) -> None:
        self._set_status(context, event, "paid")

    @handles
    def shipped(self, event: Order.Shipped, context: Context) -> None:
        self._set_status(context, event, "shipped")

    @handles
    def cancelled(self, event: Order.Cancelled, context: Context) -> None:
        self._set_status(context, event, "cancelled", event.reason)

    @staticmethod
    def _set_status(
        context: Context, event: Order.Event, status: str, reason: str | None = None
    ) -> None:
        context.execute(
            "UPDATE {order_summaries} SET status = %s, updated_at = %s, version = %s,"
            " cancellation_reason = coalesce(%s, cancellation_reason)"
            " WHERE order_id = %s AND version = %s",
            (
                status,
                event.timestamp,
                event.originator_version,
                reason,
                event.originator_id,
                event.originator_version - 1,
            ),
            # The order's previous version must be in the view: checked without a round trip.
            expect_rows=1,
            otherwise=lambda _: OutOfOrderError(event),
        )


class OutOfOrderError(Exception):
    """An order event arrived whose predecessor the view has not seen."""

    def __init__(self, event: Order.Event) -> None:
        super().__init__(
            f"order {event.originator_id}: {type(event).__qualname__} at version "
            f"{event.originator_version} does not follow the version in the view"
        )


@dataclass(frozen=True)
class OrderSummary:
    order_id: UUID
    customer_id: str
    status: str
    total: Decimal
    currency: str
    line_count: int
    placed_at: datetime
    updated_at: datetime
    cancellation_reason: str | None


_COLUMNS = (
    "order_id, customer_id, status, total, currency, line_count, placed_at, updated_at,"
    " cancellation_reason"
)


class OrderSummaryQueries(Queries):
    """Look up orders, by id, by customer, or counted by status."""

    projection = OrderSummaries

    def get(
        self, order_id: UUID, *, wait_for: int | None = None, timeout: float = 5.0
    ) -> OrderSummary | None:
        rows = self.fetch(
            "SELECT " + _COLUMNS + " FROM {order_summaries} WHERE order_id = %s",
            (order_id,),
            wait_for=wait_for,
            timeout=timeout,
        )
        return OrderSummary(*rows[0]) if rows else None

    def for_customer(self, customer_id: str, *, limit: int = 100) -> list[OrderSummary]:
        rows = self.fetch(
            "SELECT " + _COLUMNS + " FROM {order_summaries} WHERE customer_id = %s"
            " ORDER BY placed_at DESC LIMIT %s",
            (customer_id, limit),
        )
        return [OrderSummary(*r) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        rows = self.fetch("SELECT status, count(*) FROM {order_summaries} GROUP BY status")
        return {r[0]: int(r[1]) for r in rows}

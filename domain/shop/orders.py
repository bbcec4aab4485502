"""The order aggregate: what a customer asked for, and where it is on its way to them.

An order is placed, then paid, then shipped; a placed (unpaid) order can be cancelled. A
paid order cannot be cancelled here, because that would need a refund, which the example
shop does not model.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from eventsourcing.domain import event

from eventkit.domain.model import Aggregate, Immutable
from eventkit.domain.names import moved_module
from eventkit.domain.shop.errors import (
    IllegalTransitionError,
    InvalidAmountError,
    InvalidOrderLinesError,
    InvalidQuantityError,
)


class Currency(StrEnum):
    """The currency of an amount of money (ISO 4217 code)."""

    EUR = "EUR"
    USD = "USD"
    GBP = "GBP"


class OrderStatus(StrEnum):
    """Where an order is in its life."""

    PLACED = "placed"
    PAID = "paid"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


class OrderLine(Immutable):
    """So many units of one stock item, at the unit price when the order was placed."""

    sku: str
    quantity: int
    unit_price: Decimal

    @property
    def subtotal(self) -> Decimal:
        return self.quantity * self.unit_price


class Order(Aggregate):
    """A customer's order of one or more stock items."""

    class Placed(Aggregate.Created):
        customer_id: str
        lines: tuple[OrderLine, ...]
        total: Decimal
        currency: Currency

    class Paid(Aggregate.Event):
        payment_id: UUID

    class Cancelled(Aggregate.Event):
        reason: str

    class Shipped(Aggregate.Event):
        pass

    @event(Placed)
    def __init__(
        self,
        customer_id: str,
        lines: tuple[OrderLine, ...],
        total: Decimal,
        currency: Currency,
    ) -> None:
        self.customer_id = customer_id
        self.lines = lines
        self.total = total
        self.currency = currency
        self.status = OrderStatus.PLACED
        self.payment_id: UUID | None = None
        self.cancellation_reason: str | None = None

    @classmethod
    def place(cls, customer_id: str, lines: Iterable[OrderLine], currency: Currency) -> Order:
        """Place an order of ``lines``; its total is the sum of the lines' subtotals."""
        lines = tuple(lines)
        if not lines:
            raise InvalidOrderLinesError(f"an order of customer {customer_id!r} has no lines")
        skus = [line.sku for line in lines]
        repeated = sorted({sku for sku in skus if skus.count(sku) > 1})
        if repeated:
            raise InvalidOrderLinesError(
                f"an order of customer {customer_id!r} names sku(s) {', '.join(repeated)} "
                "on more than one line"
            )
        for line in lines:
            if line.quantity < 1:
                raise InvalidQuantityError(f"order line for {line.sku!r}", line.quantity)
            if line.unit_price <= 0:
                raise InvalidAmountError(f"unit price of {line.sku!r}", line.unit_price)
        total = sum((line.subtotal for line in lines), Decimal(0))
        return cls(customer_id=customer_id, lines=lines, total=total, currency=currency)

    @property
    def skus(self) -> tuple[str, ...]:
        return tuple(line.sku for line in self.lines)

    def mark_paid(self, payment_id: UUID) -> None:
        """Record that the order's payment was captured."""
        self._require("pay", OrderStatus.PLACED)
        self._paid(payment_id=payment_id)

    def cancel(self, reason: str) -> None:
        """Cancel an unpaid order."""
        self._require("cancel", OrderStatus.PLACED)
        self._cancelled(reason=reason)

    def ship(self) -> None:
        """Record that a paid order left the warehouse."""
        self._require("ship", OrderStatus.PAID)
        self._shipped()

    def _require(self, action: str, *allowed: OrderStatus) -> None:
        if self.status not in allowed:
            raise IllegalTransitionError("order", self.id, action, self.status, allowed)

    # The decorated methods below also run when the order is replayed from its events, so
    # they only change state; the checks live in the public methods above.

    @event(Paid)
    def _paid(self, payment_id: UUID) -> None:
        self.status = OrderStatus.PAID
        self.payment_id = payment_id

    @event(Cancelled)
    def _cancelled(self, reason: str) -> None:
        self.status = OrderStatus.CANCELLED
        self.cancellation_reason = reason

    @event(Shipped)
    def _shipped(self) -> None:
        self.status = OrderStatus.SHIPPED


# Before eventkit 0.2 this module was domain.orders, and the log named its events by module
# path: those rows still resolve.
moved_module("domain.orders", __name__)

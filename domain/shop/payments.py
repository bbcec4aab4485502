"""The payment aggregate: the money an order asks for, requested then captured or failed.

An order has exactly one payment, whose id is derived from the order's id
(:meth:`Payment.id_for`), so a second payment for the same order cannot be recorded.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import event

from eventkit.domain.model import Aggregate
from eventkit.domain.names import moved_module
from eventkit.domain.shop.errors import IllegalTransitionError, InvalidAmountError
from eventkit.domain.shop.orders import Currency

#: Payment ids are uuid5(PAYMENT_NAMESPACE, str(order_id)): one payment per order.
PAYMENT_NAMESPACE = UUID("0c5e8f6a-7d2b-4f1e-8b3a-9e4d6c2a1f70")


class PaymentStatus(StrEnum):
    """Where a payment is in its life."""

    REQUESTED = "requested"
    CAPTURED = "captured"
    FAILED = "failed"


class Payment(Aggregate):
    """The payment of one order."""

    @staticmethod
    def create_id(order_id: UUID, **_: Any) -> UUID:
        return uuid5(PAYMENT_NAMESPACE, str(order_id))

    @staticmethod
    def id_for(order_id: UUID) -> UUID:
        """The id of the payment of order ``order_id``."""
        return uuid5(PAYMENT_NAMESPACE, str(order_id))

    class Requested(Aggregate.Created):
        order_id: UUID
        amount: Decimal
        currency: Currency

    class Captured(Aggregate.Event):
        pass

    class Failed(Aggregate.Event):
        reason: str

    @event(Requested)
    def __init__(self, order_id: UUID, amount: Decimal, currency: Currency) -> None:
        self.order_id = order_id
        self.amount = amount
        self.currency = currency
        self.status = PaymentStatus.REQUESTED
        self.failure_reason: str | None = None

    @classmethod
    def request(cls, order_id: UUID, amount: Decimal, currency: Currency) -> Payment:
        """Ask for ``amount`` to pay for order ``order_id``."""
        if amount <= 0:
            raise InvalidAmountError(f"payment of order {order_id}", amount)
        return cls(order_id=order_id, amount=amount, currency=currency)

    def capture(self) -> None:
        """Record that the money arrived."""
        self._require("capture", PaymentStatus.REQUESTED)
        self._captured()

    def fail(self, reason: str) -> None:
        """Record that the money will not arrive, and why."""
        self._require("fail", PaymentStatus.REQUESTED)
        self._failed(reason=reason)

    def _require(self, action: str, *allowed: PaymentStatus) -> None:
        if self.status not in allowed:
            raise IllegalTransitionError("payment", self.id, action, self.status, allowed)

    # The decorated methods below also run when the payment is replayed from its events, so
    # they only change state; the checks live in the public methods above.

    @event(Captured)
    def _captured(self) -> None:
        self.status = PaymentStatus.CAPTURED

    @event(Failed)
    def _failed(self, reason: str) -> None:
        self.status = PaymentStatus.FAILED
        self.failure_reason = reason


# Before eventkit 0.2 this module was domain.payments, and the log named its events by module
# path: those rows still resolve.
moved_module("domain.payments", __name__)

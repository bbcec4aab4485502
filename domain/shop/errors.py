"""Errors of the example shop's domain: one root, one class per condition.

Each message names every value a person needs to act on it: ids, sku, quantities, statuses.
A domain error is raised before any event is emitted, so a command that fails with one
writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from uuid import UUID


class DomainError(Exception):
    """The root of every error the shop's domain raises on purpose."""


class InvalidCommandError(DomainError):
    """A command's data failed validation; ``problems`` lists (field, message) pairs."""

    def __init__(self, command: str, problems: Sequence[tuple[str, str]]) -> None:
        self.command = command
        self.problems = tuple(problems)
        listed = "; ".join(f"{field}: {message}" for field, message in self.problems)
        super().__init__(f"invalid {command}: {listed}")

    @property
    def fields(self) -> tuple[str, ...]:
        """The dotted names of the fields that failed, in the order reported."""
        return tuple(field for field, _ in self.problems)


class InvalidQuantityError(DomainError):
    """A quantity that must be positive is not."""

    def __init__(self, what: str, quantity: int) -> None:
        self.quantity = quantity
        super().__init__(f"{what}: quantity must be at least 1, got {quantity}")


class InvalidAmountError(DomainError):
    """A price or amount that must be positive is not."""

    def __init__(self, what: str, amount: Decimal) -> None:
        self.amount = amount
        super().__init__(f"{what}: amount must be greater than 0, got {amount}")


class InvalidOrderLinesError(DomainError):
    """An order's lines are empty or name a sku twice."""


class UnknownStockItemError(DomainError):
    """No stock item is registered under a sku."""

    def __init__(self, sku: str) -> None:
        self.sku = sku
        super().__init__(f"no stock item is registered with sku {sku!r}")


class StockItemAlreadyRegisteredError(DomainError):
    """A stock item is already registered under a sku."""

    def __init__(self, sku: str, stock_item_id: UUID) -> None:
        self.sku = sku
        self.stock_item_id = stock_item_id
        super().__init__(f"stock item {sku!r} is already registered (id {stock_item_id})")


class UnknownOrderError(DomainError):
    """No order has an id."""

    def __init__(self, order_id: UUID) -> None:
        self.order_id = order_id
        super().__init__(f"no order has id {order_id}")


class UnknownPaymentError(DomainError):
    """No payment has an id."""

    def __init__(self, payment_id: UUID) -> None:
        self.payment_id = payment_id
        super().__init__(f"no payment has id {payment_id}")


class InsufficientStockError(DomainError):
    """A reservation asks for more than a stock item has available."""

    def __init__(self, sku: str, order_id: UUID, requested: int, available: int) -> None:
        self.sku = sku
        self.order_id = order_id
        self.requested = requested
        self.available = available
        super().__init__(
            f"insufficient stock of {sku!r} for order {order_id}: requested {requested}, "
            f"available {available}"
        )


class DuplicateReservationError(DomainError):
    """An order already holds a reservation on a stock item."""

    def __init__(self, sku: str, order_id: UUID, reserved: int) -> None:
        self.sku = sku
        self.order_id = order_id
        self.reserved = reserved
        super().__init__(f"order {order_id} already holds a reservation of {reserved} of {sku!r}")


class UnknownReservationError(DomainError):
    """An order holds no reservation on a stock item."""

    def __init__(self, sku: str, order_id: UUID) -> None:
        self.sku = sku
        self.order_id = order_id
        super().__init__(f"order {order_id} holds no reservation of {sku!r}")


class IllegalTransitionError(DomainError):
    """A command does not apply to an aggregate in its current status."""

    def __init__(
        self,
        kind: str,
        aggregate_id: UUID,
        action: str,
        status: str,
        allowed: Sequence[str],
    ) -> None:
        self.kind = kind
        self.aggregate_id = aggregate_id
        self.action = action
        self.status = status
        self.allowed = tuple(allowed)
        super().__init__(
            f"cannot {action} {kind} {aggregate_id}: it is {status}, and only a "
            f"{' or '.join(self.allowed)} {kind} can be {_past(action)}"
        )


def _past(action: str) -> str:
    """The past participle of one of the shop's actions, for messages."""
    irregular = {"ship": "shipped", "pay": "paid", "cancel": "cancelled"}
    if action in irregular:
        return irregular[action]
    return action + ("d" if action.endswith("e") else "ed")

"""The shop's commands: frozen, validated requests to change something.

Build a command from outside data with :func:`parse_command`, which reports every bad field
at once as an :class:`~domain.errors.InvalidCommandError`. A command object that exists is
valid; whether it can be carried out depends on the aggregates it touches.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, TypeVar
from uuid import UUID

from pydantic import Field, StringConstraints, ValidationError, field_validator
from pydantic_core import ErrorDetails

from eventkit.domain.model import Immutable
from eventkit.domain.shop.errors import InvalidCommandError

MAX_ORDER_LINES = 50
MAX_LINE_QUANTITY = 1000
MAX_RECEIPT_QUANTITY = 1_000_000

Sku = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9-]{3,32}$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Price = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]


class Command(Immutable):
    """A request to change the shop's state."""


class RegisterStockItem(Command):
    sku: Sku
    name: Text
    unit_price: Price


class ReceiveStock(Command):
    sku: Sku
    quantity: Annotated[int, Field(ge=1, le=MAX_RECEIPT_QUANTITY)]


class OrderLineRequest(Immutable):
    """One line of a :class:`PlaceOrder`: a sku and how many units of it."""

    sku: Sku
    quantity: Annotated[int, Field(ge=1, le=MAX_LINE_QUANTITY)]


class PlaceOrder(Command):
    customer_id: Text
    lines: tuple[OrderLineRequest, ...]

    @field_validator("lines", mode="before")
    @classmethod
    def _has_1_to_50_lines(cls, lines: Any) -> Any:
        # Checked before the lines themselves, so that a bad line is reported once, by
        # itself, and not also as a line count that is off.
        if isinstance(lines, list | tuple) and not 1 <= len(lines) <= MAX_ORDER_LINES:
            raise ValueError(f"an order has 1 to {MAX_ORDER_LINES} lines, not {len(lines)}")
        return lines

    @field_validator("lines")
    @classmethod
    def _skus_are_unique(cls, lines: tuple[OrderLineRequest, ...]) -> tuple[OrderLineRequest, ...]:
        skus = [line.sku for line in lines]
        repeated = sorted({sku for sku in skus if skus.count(sku) > 1})
        if repeated:
            raise ValueError(f"each sku may appear on one line only; repeated: {repeated}")
        return lines


class CapturePayment(Command):
    payment_id: UUID


class FailPayment(Command):
    payment_id: UUID
    reason: Text


class ShipOrder(Command):
    order_id: UUID


class CancelOrder(Command):
    order_id: UUID
    reason: Text


C = TypeVar("C", bound=Command)


def parse_command(command_class: type[C], data: Mapping[str, Any]) -> C:
    """Build a ``command_class`` from ``data``; raise InvalidCommandError naming each bad field."""
    try:
        return command_class.model_validate(data)
    except ValidationError as e:
        problems = [(_field(error["loc"]), _problem(error)) for error in e.errors()]
        raise InvalidCommandError(command_class.__name__, problems) from e


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(command)"


def _problem(error: ErrorDetails) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return message
    got = repr(error["input"])
    return f"{message} (got {got if len(got) <= 60 else got[:57] + '...'})"

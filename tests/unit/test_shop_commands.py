"""Commands: every validation rule, reported by parse_command as InvalidCommandError."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

from eventkit.domain.shop.commands import (
    MAX_LINE_QUANTITY,
    MAX_ORDER_LINES,
    CancelOrder,
    CapturePayment,
    Command,
    FailPayment,
    OrderLineRequest,
    PlaceOrder,
    ReceiveStock,
    RegisterStockItem,
    ShipOrder,
    parse_command,
)
from eventkit.domain.shop.errors import DomainError, InvalidCommandError


def lines(n: int) -> list[dict[str, Any]]:
    return [{"sku": f"SKU-{i:03d}", "quantity": 1} for i in range(n)]


ORDER = {"customer_id": "customer-1", "lines": [{"sku": "TEA-GREEN", "quantity": 2}]}
ITEM = {"sku": "TEA-GREEN", "name": "Green tea", "unit_price": "6.90"}


def test_parse_command_builds_a_frozen_command() -> None:
    command = parse_command(PlaceOrder, ORDER)

    assert command == PlaceOrder(
        customer_id="customer-1", lines=(OrderLineRequest(sku="TEA-GREEN", quantity=2),)
    )
    with pytest.raises(ValidationError, match="frozen"):
        command.customer_id = "someone else"  # type: ignore[misc]


def test_parse_command_keeps_the_price_exactly() -> None:
    command = parse_command(RegisterStockItem, {**ITEM, "unit_price": "1.10"})

    assert command.unit_price == Decimal("1.10")
    assert command.unit_price.as_tuple().exponent == -2


@pytest.mark.parametrize(
    ("command_class", "data", "field"),
    [
        (PlaceOrder, {**ORDER, "customer_id": ""}, "customer_id"),
        (PlaceOrder, {**ORDER, "customer_id": "   "}, "customer_id"),
        (PlaceOrder, {"lines": ORDER["lines"]}, "customer_id"),
        (PlaceOrder, {**ORDER, "lines": []}, "lines"),
        (PlaceOrder, {**ORDER, "lines": lines(MAX_ORDER_LINES + 1)}, "lines"),
        (PlaceOrder, {**ORDER, "lines": [{"sku": "TEA-GREEN", "quantity": 0}]}, "lines.0.quantity"),
        (
            PlaceOrder,
            {**ORDER, "lines": [{"sku": "TEA-GREEN", "quantity": MAX_LINE_QUANTITY + 1}]},
            "lines.0.quantity",
        ),
        (PlaceOrder, {**ORDER, "lines": [{"sku": "tea-green", "quantity": 1}]}, "lines.0.sku"),
        (
            PlaceOrder,
            {**ORDER, "lines": [{"sku": "TEA-GREEN", "quantity": 1}, {"sku": "B", "quantity": 1}]},
            "lines.1.sku",
        ),
        (
            PlaceOrder,
            {**ORDER, "lines": [{"sku": "TEA-GREEN", "quantity": 1}] * 2},
            "lines",
        ),
        (PlaceOrder, {**ORDER, "coupon": "FREE"}, "coupon"),
        (RegisterStockItem, {**ITEM, "sku": "TE"}, "sku"),
        (RegisterStockItem, {**ITEM, "sku": "T" * 33}, "sku"),
        (RegisterStockItem, {**ITEM, "sku": "TEA GREEN"}, "sku"),
        (RegisterStockItem, {**ITEM, "name": ""}, "name"),
        (RegisterStockItem, {**ITEM, "unit_price": "0"}, "unit_price"),
        (RegisterStockItem, {**ITEM, "unit_price": "-1.00"}, "unit_price"),
        (RegisterStockItem, {**ITEM, "unit_price": "6.905"}, "unit_price"),
        (RegisterStockItem, {**ITEM, "unit_price": "NaN"}, "unit_price"),
        (RegisterStockItem, {**ITEM, "unit_price": "cheap"}, "unit_price"),
        (ReceiveStock, {"sku": "TEA-GREEN", "quantity": 0}, "quantity"),
        (ReceiveStock, {"sku": "TEA-GREEN", "quantity": "lots"}, "quantity"),
        (ReceiveStock, {"sku": "?", "quantity": 1}, "sku"),
        (CapturePayment, {"payment_id": "not-a-uuid"}, "payment_id"),
        (FailPayment, {"payment_id": str(uuid4()), "reason": ""}, "reason"),
        (FailPayment, {"payment_id": str(uuid4())}, "reason"),
        (ShipOrder, {}, "order_id"),
        (CancelOrder, {"order_id": str(uuid4()), "reason": " "}, "reason"),
    ],
)
def test_a_bad_command_raises_invalid_command_error_naming_the_field(
    command_class: type[Command], data: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidCommandError) as raised:
        parse_command(command_class, data)

    error = raised.value
    assert isinstance(error, DomainError)
    assert error.command == command_class.__name__
    assert error.fields == (field,)
    assert str(error).startswith(f"invalid {command_class.__name__}: {field}: ")
    assert isinstance(error.__cause__, ValidationError)


def test_every_bad_field_is_listed_with_the_value_given() -> None:
    data = {"customer_id": "", "lines": [{"sku": "x", "quantity": 5000}]}

    with pytest.raises(InvalidCommandError) as raised:
        parse_command(PlaceOrder, data)

    assert raised.value.fields == ("customer_id", "lines.0.sku", "lines.0.quantity")
    message = str(raised.value)
    assert "(got 'x')" in message
    assert "(got 5000)" in message
    assert "less than or equal to 1000" in message


def test_a_repeated_sku_is_named() -> None:
    data = {**ORDER, "lines": [{"sku": "TEA-GREEN", "quantity": 1}] * 2}

    with pytest.raises(InvalidCommandError, match=r"repeated: \['TEA-GREEN'\]"):
        parse_command(PlaceOrder, data)


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidCommandError) as raised:
        parse_command(ReceiveStock, {"sku": "x" * 500, "quantity": 1})

    assert len(str(raised.value)) < 200
    assert "...)" in str(raised.value)

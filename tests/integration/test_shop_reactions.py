"""The shop's reactions, with eventkit's harness: given events, then what each reaction did
through the ledger; the payment gateway is a fake passed to the reaction's constructor."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import (
    OrderLineRequest,
    PlaceOrder,
    ReceiveStock,
    RegisterStockItem,
)
from eventkit.domain.shop.orders import Order, OrderStatus
from eventkit.domain.shop.payments import Payment, PaymentStatus
from eventkit.projections.shop import ChargePayments, OrderMails
from eventkit.testing import ReactionScenario, Transaction, new_event


class FakeGateway:
    """Answers every charge with ``answer`` and remembers the idempotency keys it saw."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.keys: list[str] = []

    def charge(self, payment: Payment.Requested, idempotency_key: str) -> dict[str, Any]:
        self.keys.append(idempotency_key)
        return self.answer


@pytest.fixture
def shop(eventkit_memory_env: dict[str, str]) -> Iterator[Shop]:
    shop = Shop(env=eventkit_memory_env)
    shop.register_stock_item(RegisterStockItem(sku="TEA", name="Tea", unit_price=Decimal(3)))
    shop.receive_stock(ReceiveStock(sku="TEA", quantity=10))
    yield shop
    shop.close()


def requested(shop: Shop) -> tuple[UUID, Payment.Requested]:
    """Place an order; its id and its payment's Payment.Requested event, as recorded."""
    placement = shop.place_order(
        PlaceOrder(customer_id="ada", lines=(OrderLineRequest(sku="TEA", quantity=2),))
    )
    [event] = list(shop.events.get(placement.payment_id))
    assert isinstance(event, Payment.Requested)
    return placement.order_id, event


def test_a_captured_charge_pays_the_order_once(
    shop: Shop, eventkit_transaction: Transaction
) -> None:
    gateway = FakeGateway({"status": "captured"})
    charges = ReactionScenario(ChargePayments(shop, gateway), eventkit_transaction)
    order_id, event = requested(shop)

    charges.given(event).redeliver()

    assert [d.outcome for d in charges.deliveries] == ["executed", "duplicate"]
    assert gateway.keys == [str(charges.message_id(event))]
    assert shop.get_payment(event.originator_id).status is PaymentStatus.CAPTURED
    assert shop.get_order(order_id).status is OrderStatus.PAID


def test_a_declined_charge_cancels_the_order(shop: Shop, eventkit_transaction: Transaction) -> None:
    gateway = FakeGateway({"status": "declined", "reason": "card expired"})
    charges = ReactionScenario(ChargePayments(shop, gateway), eventkit_transaction)
    order_id, event = requested(shop)

    charges.given(event)

    assert shop.get_payment(event.originator_id).failure_reason == "card expired"
    assert shop.get_order(order_id).status is OrderStatus.CANCELLED


def test_each_shipped_or_cancelled_order_gets_one_mail(eventkit_transaction: Transaction) -> None:
    shipped, cancelled = uuid4(), uuid4()
    mails = ReactionScenario(OrderMails(), eventkit_transaction)

    mails.given(
        new_event(Order.Shipped, shipped),
        new_event(Order.Cancelled, cancelled, reason="out of stock"),
        new_event(Order.Paid, shipped, payment_id=uuid4()),  # no mail for this one
    ).redeliver()

    assert sorted(d.outcome for d in mails.deliveries) == ["duplicate"] * 2 + ["executed"] * 2
    rows = mails.rows("order_mails", columns=["order_id", "kind", "body"], order_by="kind")
    assert rows == [
        {"order_id": cancelled, "kind": "cancelled", "body": "Order cancelled: out of stock."},
        {"order_id": shipped, "kind": "shipped", "body": "Your order is on its way."},
    ]
    assert sorted(mails.ledger()) == sorted({d.message_id for d in mails.deliveries})

"""Payment: given its history, when a command, then new events (or an error and none)."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from eventkit.domain.shop.errors import IllegalTransitionError, InvalidAmountError
from eventkit.domain.shop.orders import Currency
from eventkit.domain.shop.payments import Payment, PaymentStatus

ORDER_ID = UUID("00000000-0000-4000-8000-0000000000aa")


def given(*steps: str) -> Payment:
    """A requested payment of 25.80 EUR, taken through ``steps`` ("captured", "failed")."""
    payment = Payment.request(ORDER_ID, Decimal("25.80"), Currency.EUR)
    for step in steps:
        if step == "captured":
            payment.capture()
        elif step == "failed":
            payment.fail("card declined")
    payment.collect_events()
    return payment


def test_request_emits_requested_with_id_from_the_order() -> None:
    payment = Payment.request(ORDER_ID, Decimal("25.80"), Currency.USD)

    [event] = payment.collect_events()
    assert isinstance(event, Payment.Requested)
    assert (event.order_id, event.amount, event.currency) == (
        ORDER_ID,
        Decimal("25.80"),
        Currency.USD,
    )
    assert payment.id == Payment.id_for(ORDER_ID)
    assert Payment.id_for(ORDER_ID) != Payment.id_for(uuid4())
    assert payment.status is PaymentStatus.REQUESTED


@pytest.mark.parametrize("amount", [Decimal(0), Decimal("-5.00")])
def test_request_rejects_an_amount_that_is_not_positive(amount: Decimal) -> None:
    with pytest.raises(InvalidAmountError, match=rf"payment of order {ORDER_ID}.*got {amount}"):
        Payment.request(ORDER_ID, amount, Currency.EUR)


def test_capture_emits_captured() -> None:
    payment = given()

    payment.capture()

    [event] = payment.collect_events()
    assert isinstance(event, Payment.Captured)
    assert payment.status is PaymentStatus.CAPTURED


def test_fail_emits_failed_with_the_reason() -> None:
    payment = given()

    payment.fail("card declined")

    [event] = payment.collect_events()
    assert isinstance(event, Payment.Failed)
    assert event.reason == "card declined"
    assert (payment.status, payment.failure_reason) == (PaymentStatus.FAILED, "card declined")


@pytest.mark.parametrize(
    ("history", "action", "status"),
    [
        (("captured",), "capture", "captured"),
        (("failed",), "capture", "failed"),
        (("captured",), "fail", "captured"),
        (("failed",), "fail", "failed"),
    ],
)
def test_capture_and_fail_only_from_requested(
    history: tuple[str, ...], action: str, status: str
) -> None:
    payment = given(*history)
    command = payment.capture if action == "capture" else lambda: payment.fail("again")

    with pytest.raises(IllegalTransitionError) as raised:
        command()

    assert str(raised.value).startswith(f"cannot {action} payment {payment.id}: it is {status}")
    assert raised.value.allowed == ("requested",)
    assert payment.collect_events() == []
    assert payment.status == status

"""Payment: given its history, when a command, then new events (or an error and none),
with eventkit's harness (eventkit.testing.AggregateScenario)."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from eventkit.domain.shop.errors import IllegalTransitionError, InvalidAmountError
from eventkit.domain.shop.orders import Currency
from eventkit.domain.shop.payments import Payment, PaymentStatus
from eventkit.testing import AggregateScenario, expect, new_event

ORDER_ID = UUID("00000000-0000-4000-8000-0000000000aa")


REQUESTED = new_event(
    Payment.Requested, order_id=ORDER_ID, amount=Decimal("25.80"), currency=Currency.EUR
)
HISTORIES = {
    "requested": (REQUESTED,),
    "captured": (REQUESTED, new_event(Payment.Captured)),
    "failed": (REQUESTED, new_event(Payment.Failed, reason="card declined")),
}


def test_request_emits_requested_with_id_from_the_order() -> None:
    scenario = (
        AggregateScenario(Payment)
        .when(lambda: Payment.request(ORDER_ID, Decimal("25.80"), Currency.USD))
        .then(
            expect(
                Payment.Requested,
                originator_id=Payment.id_for(ORDER_ID),
                order_id=ORDER_ID,
                amount=Decimal("25.80"),
                currency=Currency.USD,
            )
        )
    )

    assert Payment.id_for(ORDER_ID) != Payment.id_for(uuid4())
    assert scenario.aggregate is not None
    assert scenario.aggregate.status is PaymentStatus.REQUESTED


@pytest.mark.parametrize("amount", [Decimal(0), Decimal("-5.00")])
def test_request_rejects_an_amount_that_is_not_positive(amount: Decimal) -> None:
    AggregateScenario(Payment).when(
        lambda: Payment.request(ORDER_ID, amount, Currency.EUR)
    ).then_raises(InvalidAmountError, match=rf"payment of order {ORDER_ID}.*got {amount}")


def test_capture_emits_captured() -> None:
    scenario = (
        AggregateScenario(Payment)
        .given(REQUESTED)
        .when(lambda payment: payment.capture())
        .then(expect(Payment.Captured))
    )

    assert scenario.aggregate is not None
    assert scenario.aggregate.status is PaymentStatus.CAPTURED


def test_fail_emits_failed_with_the_reason() -> None:
    scenario = (
        AggregateScenario(Payment)
        .given(REQUESTED)
        .when(lambda payment: payment.fail("card declined"))
        .then(expect(Payment.Failed, reason="card declined"))
    )

    assert scenario.aggregate is not None
    assert (scenario.aggregate.status, scenario.aggregate.failure_reason) == (
        PaymentStatus.FAILED,
        "card declined",
    )


@pytest.mark.parametrize(
    ("status", "action"),
    [("captured", "capture"), ("failed", "capture"), ("captured", "fail"), ("failed", "fail")],
)
def test_capture_and_fail_only_from_requested(status: str, action: str) -> None:
    payment_id = Payment.id_for(ORDER_ID)
    scenario = (
        AggregateScenario(Payment, payment_id)
        .given(*HISTORIES[status])
        .when(lambda p: p.capture() if action == "capture" else p.fail("again"))
    )

    error = scenario.then_raises(
        IllegalTransitionError, match=rf"^cannot {action} payment {payment_id}: it is {status}"
    )

    assert error.allowed == ("requested",)
    assert scenario.aggregate is not None
    assert scenario.aggregate.status == status

"""eventkit.testing.AggregateScenario: given events, when a command, then events or an error."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import event
from freezegun import freeze_time
from pydantic import field_validator

from eventkit.domain.model import Aggregate
from eventkit.domain.shop.errors import IllegalTransitionError
from eventkit.domain.shop.orders import Currency, Order, OrderLine, OrderStatus
from eventkit.testing import AggregateScenario, expect, new_event

PAYMENT_ID = UUID("00000000-0000-4000-8000-0000000000a1")
LINES = (OrderLine(sku="TEA-GREEN", quantity=2, unit_price=Decimal("6.90")),)
PLACED = new_event(
    Order.Placed, customer_id="ada", lines=LINES, total=Decimal("13.80"), currency=Currency.EUR
)


class Careless(Aggregate):
    """An aggregate whose command emits before it checks, and whose event's validator is
    not idempotent: what the harness must catch."""

    class Started(Aggregate.Created):
        pass

    class Noted(Aggregate.Event):
        text: str

        @field_validator("text")
        @classmethod
        def _exclaim(cls, value: str) -> str:
            return value + "!"

    @event(Started)
    def __init__(self) -> None:
        pass

    class Touched(Aggregate.Event):
        pass

    def touch_then_check(self) -> None:
        self._touched()
        raise ValueError("checked too late")

    @event(Touched)
    def _touched(self) -> None:
        pass

    @event(Noted)
    def _noted(self, text: str) -> None:
        self.text = text


def test_then_compares_the_class_and_the_stated_fields() -> None:
    scenario = (
        AggregateScenario(Order)
        .given(PLACED)
        .when(lambda order: order.mark_paid(PAYMENT_ID))
        .then(expect(Order.Paid, payment_id=PAYMENT_ID))
    )

    assert scenario.aggregate is not None
    assert scenario.aggregate.status is OrderStatus.PAID
    [paid] = scenario.events
    assert paid.originator_version == 2


def test_a_wrong_field_fails_naming_the_field_and_both_values() -> None:
    other = uuid4()
    scenario = AggregateScenario(Order).given(PLACED).when(lambda o: o.mark_paid(PAYMENT_ID))

    with pytest.raises(AssertionError) as raised:
        scenario.then(expect(Order.Paid, payment_id=other))

    message = str(raised.value)
    assert "the command's events differ from the expected ones" in message
    assert f"#1 Order.Paid.payment_id: expected {other!r}, got {PAYMENT_ID!r}" in message
    assert f"#1: Order.Paid(stream {scenario.events[0].originator_id}, version 2" in message


def test_a_missing_an_extra_and_a_wrong_event_are_each_named() -> None:
    scenario = AggregateScenario(Order).given(PLACED).when(lambda o: o.mark_paid(PAYMENT_ID))

    with pytest.raises(AssertionError, match=r"#2: expected Order.Shipped\(\), got no event"):
        scenario.then(expect(Order.Paid), expect(Order.Shipped))
    with pytest.raises(AssertionError, match=r"#1: got Order.Paid\(stream .*, expected no event"):
        scenario.then()
    with pytest.raises(AssertionError, match=r"#1: expected Order.Cancelled\(\), got Order.Paid"):
        scenario.then(expect(Order.Cancelled))


def test_originator_fields_are_compared_only_when_stated() -> None:
    scenario = AggregateScenario(Order).given(PLACED).when(lambda o: o.cancel("no"))

    scenario.then(expect(Order.Cancelled, reason="no"))
    scenario.then(expect(Order.Cancelled, originator_version=2))
    with pytest.raises(AssertionError, match="originator_version: expected 3, got 2"):
        scenario.then(expect(Order.Cancelled, originator_version=3))


def test_with_time_frozen_timestamps_compare_exactly() -> None:
    with freeze_time("2026-05-01 09:00:00"):
        scenario = (
            AggregateScenario(Order)
            .given(PLACED)
            .when(lambda o: o.cancel("no"))
            .then(expect(Order.Cancelled, timestamp=datetime(2026, 5, 1, 9, tzinfo=UTC)))
        )
        with pytest.raises(AssertionError, match="timestamp: expected"):
            scenario.then(expect(Order.Cancelled, timestamp=datetime(2026, 5, 1, 10, tzinfo=UTC)))


def test_an_event_stated_in_full_or_in_part_is_an_expectation() -> None:
    scenario = AggregateScenario(Order).given(PLACED).when(lambda o: o.mark_paid(PAYMENT_ID))

    scenario.then(Order.Paid.model_construct(payment_id=PAYMENT_ID))
    scenario.then(scenario.events[0])


def test_a_creating_command_is_a_function_of_nothing() -> None:
    with freeze_time("2026-05-01 09:00:00"):
        scenario = (
            AggregateScenario(Order)
            .when(lambda: Order.place("ada", LINES, Currency.EUR))
            .then(
                expect(
                    Order.Placed,
                    customer_id="ada",
                    total=Decimal("13.80"),
                    originator_version=1,
                    timestamp=datetime(2026, 5, 1, 9, tzinfo=UTC),
                )
            )
        )

    assert scenario.aggregate is not None
    assert scenario.aggregate.lines == LINES


def test_then_raises_returns_the_error() -> None:
    error = (
        AggregateScenario(Order)
        .given(PLACED, new_event(Order.Cancelled, reason="no"))
        .when(lambda o: o.ship())
        .then_raises(IllegalTransitionError, match="it is cancelled")
    )

    assert (error.action, error.status) == ("ship", "cancelled")


def test_then_raises_fails_when_the_command_succeeds_or_raises_something_else() -> None:
    succeeded = AggregateScenario(Order).given(PLACED).when(lambda o: o.cancel("no"))
    with pytest.raises(
        AssertionError,
        match=r"expected the command to raise IllegalTransitionError, but it succeeded and "
        r"emitted Order.Cancelled\(stream .*reason='no'\)",
    ):
        succeeded.then_raises(IllegalTransitionError)

    other = AggregateScenario(Order).given(PLACED).when(lambda o: o.ship())
    with pytest.raises(AssertionError, match="but it raised IllegalTransitionError: cannot ship"):
        other.then_raises(KeyError)
    with pytest.raises(AssertionError, match="does not match 'delivered'"):
        other.then_raises(IllegalTransitionError, match="delivered")
    with pytest.raises(AssertionError, match="the command raised IllegalTransitionError"):
        other.then(expect(Order.Shipped))


def test_an_error_after_emitting_is_caught() -> None:
    scenario = AggregateScenario(Careless).when(Careless)
    careless = scenario.aggregate
    assert careless is not None

    bad = AggregateScenario(Careless).given(*scenario.events)
    with pytest.raises(AssertionError, match="raised ValueError but left events pending"):
        bad.when(lambda c: c.touch_then_check()).then_raises(ValueError)


def test_an_event_that_changes_in_the_store_is_named() -> None:
    started = new_event(Careless.Started)

    with pytest.raises(AssertionError, match=r"text: 'hi!' comes back as 'hi!!'"):
        AggregateScenario(Careless).given(started, new_event(Careless.Noted, text="hi"))


def test_given_checks_streams_and_versions() -> None:
    order = Order.place("ada", LINES, Currency.EUR)
    order.cancel("no")
    events = order.collect_events()

    with pytest.raises(
        ValueError, match=r"at version 1, but that stream was given up to version 2"
    ):
        AggregateScenario(Order).given(*events, events[0])
    with pytest.raises(ValueError, match="given events of 2 streams"):
        AggregateScenario(Order).given(events[0], new_event(Order.Placed, uuid4(), **_placed()))
    with pytest.raises(TypeError, match=r"Order.Paid has no field\(s\) paymnet_id"):
        expect(Order.Paid, paymnet_id=PAYMENT_ID)


def test_given_takes_an_aggregates_pending_events() -> None:
    order = Order.place("ada", LINES, Currency.EUR)

    AggregateScenario(Order).given(order).when(lambda o: o.cancel("no")).then(
        expect(Order.Cancelled, originator_id=order.id, originator_version=2)
    )


def _placed() -> dict[str, object]:
    return {"customer_id": "bo", "lines": LINES, "total": Decimal("13.80"), "currency": "EUR"}

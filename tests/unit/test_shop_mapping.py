"""Every event of the shop survives eventkit's mapper exactly: encoded, stored, decoded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypedDict
from uuid import UUID

import pytest
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.utils import get_topic

from eventkit.domain.model import Aggregate, DomainEvent
from eventkit.domain.shop.orders import Currency, Order, OrderLine
from eventkit.domain.shop.payments import Payment
from eventkit.domain.shop.stock import StockItem
from eventkit.infrastructure.transcoding import PydanticMapper

AGGREGATES: tuple[type[Aggregate], ...] = (StockItem, Order, Payment)
STREAM = UUID("3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b")
ORDER_ID = UUID("a1b2c3d4-e5f6-4789-8abc-def012345678")
PAYMENT_ID = UUID("0f1e2d3c-4b5a-4697-8877-665544332211")
# An offset other than UTC, to see that the offset survives and not just the instant.
WHEN = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))


class Header(TypedDict):
    originator_id: UUID
    originator_version: int
    timestamp: datetime


def header(version: int) -> Header:
    return {"originator_id": STREAM, "originator_version": version, "timestamp": WHEN}


SAMPLES: list[DomainEvent] = [
    StockItem.Registered(
        **header(1),
        originator_topic=get_topic(StockItem),
        sku="TEA-GREEN",
        name="Sencha green tea, 100 g — «première»",
        unit_price=Decimal("1.10"),
    ),
    StockItem.Received(**header(2), quantity=40),
    StockItem.Reserved(**header(3), order_id=ORDER_ID, quantity=3),
    StockItem.Released(**header(4), order_id=ORDER_ID, quantity=3),
    StockItem.ReservationCommitted(**header(5), order_id=ORDER_ID, quantity=2),
    Order.Placed(
        **header(1),
        originator_topic=get_topic(Order),
        customer_id="customer-1",
        lines=(
            OrderLine(sku="TEA-GREEN", quantity=2, unit_price=Decimal("1.10")),
            OrderLine(sku="MUG-WHITE", quantity=1, unit_price=Decimal("12.00")),
        ),
        total=Decimal("14.20"),
        currency=Currency.GBP,
    ),
    Order.Paid(**header(2), payment_id=PAYMENT_ID),
    Order.Cancelled(**header(2), reason="payment failed: card declined"),
    Order.Shipped(**header(3)),
    Payment.Requested(
        **header(1),
        originator_topic=get_topic(Payment),
        order_id=ORDER_ID,
        amount=Decimal("14.20"),
        currency=Currency.USD,
    ),
    Payment.Captured(**header(2)),
    Payment.Failed(**header(2), reason="card declined"),
]


def event_classes() -> set[type[Any]]:
    """Every event class declared on the shop's aggregates.

    eventsourcing gives each aggregate class its own ``Event`` and ``Created`` bases; those
    are never emitted, so they are left out.
    """
    return {
        value
        for aggregate in AGGREGATES
        for name, value in vars(aggregate).items()
        if isinstance(value, type)
        and issubclass(value, CanMutateAggregate)
        and name not in {"Event", "Created"}
    }


def round_trip(event: DomainEvent) -> DomainEvent:
    mapper = PydanticMapper()
    stored = mapper.to_stored_event(event)
    decoded = mapper.to_domain_event(stored)
    assert isinstance(decoded, DomainEvent)
    return decoded


def test_the_samples_cover_every_event_type() -> None:
    assert {type(event) for event in SAMPLES} == event_classes()
    assert len(event_classes()) == 12


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__qualname__)
def test_an_event_decodes_to_what_was_encoded(event: DomainEvent) -> None:
    decoded = round_trip(event)

    assert type(decoded) is type(event)
    assert decoded == event
    assert decoded.model_dump() == event.model_dump()


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__qualname__)
def test_the_timestamp_keeps_its_offset(event: DomainEvent) -> None:
    decoded = round_trip(event)

    assert decoded.timestamp == WHEN
    assert decoded.timestamp.utcoffset() == timedelta(hours=2)


def test_decimals_keep_their_exponent() -> None:
    registered, placed = SAMPLES[0], SAMPLES[5]
    assert isinstance(registered, StockItem.Registered)
    assert isinstance(placed, Order.Placed)

    decoded_registered = round_trip(registered)
    decoded_placed = round_trip(placed)

    assert isinstance(decoded_registered, StockItem.Registered)
    assert isinstance(decoded_placed, Order.Placed)
    assert str(decoded_registered.unit_price) == "1.10"
    assert [str(line.unit_price) for line in decoded_placed.lines] == ["1.10", "12.00"]
    assert str(decoded_placed.total) == "14.20"


def test_nested_models_enums_and_uuids_decode_to_their_types() -> None:
    decoded = round_trip(SAMPLES[5])

    assert isinstance(decoded, Order.Placed)
    assert all(isinstance(line, OrderLine) for line in decoded.lines)
    assert isinstance(decoded.lines, tuple)
    assert decoded.currency is Currency.GBP
    assert isinstance(decoded.originator_id, UUID)


def test_the_stored_state_is_readable_json() -> None:
    stored = PydanticMapper().to_stored_event(SAMPLES[5])

    assert stored.topic == "Order.Placed"
    text = stored.state.decode()
    assert '"total":"14.20"' in text
    assert '"currency":"GBP"' in text
    assert '"timestamp":"2024-05-01T14:30:15.123456+02:00"' in text
    assert "originator_id" not in text


def test_events_emitted_by_commands_survive_too() -> None:
    item = StockItem.register("TEA-GREEN", "Green tea", Decimal("6.90"))
    item.receive(5)
    item.reserve(ORDER_ID, 2)
    events: list[Any] = list(item.collect_events())

    decoded = [round_trip(event) for event in events]

    assert decoded == events
    assert all(event.timestamp.tzinfo is not None for event in decoded)
    assert decoded[0].timestamp.utcoffset() == timedelta(0)
    assert decoded[0].timestamp <= datetime.now(UTC)

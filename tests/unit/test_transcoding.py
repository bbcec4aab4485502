"""The pydantic mapper: exact round trips, upcasting, and loud failures on bad payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.domain import event
from eventsourcing.persistence import StoredEvent
from freezegun import freeze_time

from eventkit.domain.model import Aggregate, Immutable
from eventkit.domain.names import EVENT_TYPES
from eventkit.infrastructure.errors import (
    ConfigurationError,
    EventDecodingError,
    EventEncodingError,
)
from eventkit.infrastructure.transcoding import PydanticMapper


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Money(Immutable):
    amount: Decimal
    currency: str


class Parcel(Immutable):
    weight_kg: Decimal
    contents: tuple[Money, ...]
    tags: frozenset[str]


class Crate(Aggregate):
    class Packed(Aggregate.Created):
        parcel: Parcel
        colour: Colour
        owner: UUID
        ship_by: datetime
        note: str | None

    @event(Packed)
    def __init__(
        self, parcel: Parcel, colour: Colour, owner: UUID, ship_by: datetime, note: str | None
    ) -> None:
        self.parcel = parcel

    class Relabelled(Aggregate.Event):
        """Version 3: ``label`` was ``name`` in v1, and ``urgent`` arrived in v3."""

        class_version: ClassVar[int] = 3
        label: str
        urgent: bool

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["label"] = state.pop("name")

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["urgent"] = False

    @event(Relabelled)
    def relabel(self, label: str, urgent: bool) -> None:
        self.label = label


@pytest.fixture
def mapper() -> PydanticMapper:
    return PydanticMapper()


def packed_crate() -> Crate:
    return Crate(
        parcel=Parcel(
            weight_kg=Decimal("1.10"),
            contents=(Money(amount=Decimal("0.30"), currency="EUR"),),
            tags=frozenset({"fragile", "gift"}),
        ),
        colour=Colour.BLUE,
        owner=uuid4(),
        ship_by=datetime(2026, 12, 24, 18, 30, tzinfo=timezone(timedelta(hours=2))),
        note=None,
    )


def test_events_round_trip_exactly(mapper: PydanticMapper) -> None:
    crate = packed_crate()
    crate.relabel(label="Keep dry", urgent=True)
    events = crate.collect_events()
    assert [type(e) for e in events] == [Crate.Packed, Crate.Relabelled]
    for original in events:
        stored = mapper.to_stored_event(original)
        decoded = mapper.to_domain_event(stored)
        assert decoded == original
        assert type(decoded) is type(original)


def test_decimal_keeps_its_exponent_and_datetime_its_offset(mapper: PydanticMapper) -> None:
    [created] = packed_crate().collect_events()
    decoded = mapper.to_domain_event(mapper.to_stored_event(created))
    assert isinstance(decoded, Crate.Packed)
    assert str(decoded.parcel.weight_kg) == "1.10"
    assert decoded.ship_by.utcoffset() == timedelta(hours=2)
    assert decoded.colour is Colour.BLUE


def test_stored_state_is_readable_json_without_the_stream_columns(mapper: PydanticMapper) -> None:
    [created] = packed_crate().collect_events()
    stored = mapper.to_stored_event(created)
    state = json.loads(stored.state)
    assert stored.topic == EVENT_TYPES.name(Crate.Packed)
    assert stored.originator_id == created.originator_id
    assert "originator_id" not in state
    assert "originator_version" not in state
    assert state["parcel"]["weight_kg"] == "1.10"
    assert state["colour"] == "blue"


@freeze_time("2026-11-28 12:00:00")
def test_the_event_time_is_stored(mapper: PydanticMapper) -> None:
    [created] = packed_crate().collect_events()
    state = json.loads(mapper.to_stored_event(created).state)
    assert datetime.fromisoformat(state["timestamp"]) == datetime(2026, 11, 28, 12, tzinfo=UTC)


def stored_relabel(state: dict[str, Any]) -> StoredEvent:
    return StoredEvent(uuid4(), 2, EVENT_TYPES.name(Crate.Relabelled), json.dumps(state).encode())


def test_upcasting_runs_every_step_from_the_stored_version(mapper: PydanticMapper) -> None:
    v1 = {"timestamp": "2026-01-01T00:00:00+00:00", "name": "old"}
    decoded = mapper.to_domain_event(stored_relabel(v1))
    assert isinstance(decoded, Crate.Relabelled)
    assert (decoded.label, decoded.urgent) == ("old", False)

    v2 = {"timestamp": "2026-01-01T00:00:00+00:00", "label": "mid", "class_version": 2}
    decoded = mapper.to_domain_event(stored_relabel(v2))
    assert isinstance(decoded, Crate.Relabelled)
    assert (decoded.label, decoded.urgent) == ("mid", False)


def test_a_failing_upcaster_is_reported_with_its_name(mapper: PydanticMapper) -> None:
    with pytest.raises(EventDecodingError, match=r"upcast_v1_v2\(\) failed: KeyError"):
        mapper.to_domain_event(stored_relabel({"timestamp": "2026-01-01T00:00:00+00:00"}))


def test_the_current_class_version_is_stored(mapper: PydanticMapper) -> None:
    crate = packed_crate()
    crate.relabel(label="x", urgent=False)
    stored = mapper.to_stored_event(crate.collect_events()[1])
    assert json.loads(stored.state)["class_version"] == 3


def test_a_payload_from_newer_code_is_refused(mapper: PydanticMapper) -> None:
    state = {"timestamp": "2026-01-01T00:00:00+00:00", "label": "x", "urgent": True}
    with pytest.raises(EventDecodingError, match="class_version 9"):
        mapper.to_domain_event(stored_relabel({**state, "class_version": 9}))


def test_an_invalid_payload_is_refused_with_stream_version_and_topic(
    mapper: PydanticMapper,
) -> None:
    stored = stored_relabel(
        {"timestamp": "2026-01-01T00:00:00+00:00", "label": 5, "urgent": 1, "class_version": 3}
    )
    with pytest.raises(EventDecodingError) as raised:
        mapper.to_domain_event(stored)
    message = str(raised.value)
    assert str(stored.originator_id) in message
    assert "version 2" in message
    assert stored.topic in message
    assert "label" in message


@pytest.mark.parametrize(
    ("topic", "state", "reason"),
    [
        ("no.such.module:Event", b"{}", "unknown event type"),
        (EVENT_TYPES.name(Crate.Relabelled), b"{not json", "not JSON"),
        (EVENT_TYPES.name(Crate.Relabelled), b"[1, 2]", "not a JSON object"),
        # A module path the log names is never imported: not even a real class.
        (f"{__name__}:Colour", b"{}", "unknown event type"),
        ("this:s", b"{}", "unknown event type"),
    ],
)
def test_undecodable_events_raise_a_decoding_error(
    mapper: PydanticMapper, topic: str, state: bytes, reason: str
) -> None:
    with pytest.raises(EventDecodingError, match=reason):
        mapper.to_domain_event(StoredEvent(uuid4(), 1, topic, state))


def test_an_event_that_is_not_pydantic_cannot_be_stored(mapper: PydanticMapper) -> None:
    from eventsourcing.domain import Aggregate as PlainAggregate

    plain = PlainAggregate()
    with pytest.raises(EventEncodingError, match="not a pydantic model"):
        mapper.to_stored_event(plain.collect_events()[0])


def test_compression_is_refused_because_payloads_stay_readable() -> None:
    with pytest.raises(ConfigurationError, match="COMPRESSOR_TOPIC"):
        PydanticMapper(compressor=ZlibCompressor())

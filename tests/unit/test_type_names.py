"""Stable type names: what the log stores for event and aggregate types, and what it reads."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.domain import event
from eventsourcing.persistence import StoredEvent

from eventkit.domain.model import Aggregate
from eventkit.domain.names import (
    AGGREGATE_TYPES,
    EVENT_TYPES,
    TypeNameError,
    UnknownTypeNameError,
    moved_module,
)
from eventkit.domain.shop.orders import Currency, Order, OrderLine
from eventkit.infrastructure.errors import EventDecodingError, EventEncodingError
from eventkit.infrastructure.transcoding import PydanticMapper


class Parcel(Aggregate, type_name="tests.Parcel"):
    class Sent(Aggregate.Created):
        to: str

    class Delivered(Aggregate.Event, type_name="tests.ParcelDelivered", aliases=("Delivered",)):
        pass

    @event(Sent)
    def __init__(self, to: str) -> None:
        self.to = to

    @event(Delivered)
    def deliver(self) -> None:
        self.delivered = True


@pytest.fixture
def mapper() -> PydanticMapper:
    return PydanticMapper()


def module_with(name: str, source: str) -> types.ModuleType:
    """A module ``name`` defined from ``source``, registered so eventsourcing finds it."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, name, "exec"), module.__dict__)
    return module


@pytest.fixture
def two_modules() -> Iterator[tuple[types.ModuleType, types.ModuleType]]:
    source = (
        "from eventkit.domain.model import Aggregate\n"
        "class Ledger(Aggregate):\n"
        "    class Opened(Aggregate.Created):\n"
        "        pass\n"
    )
    a, b = module_with("names_test_a", source), module_with("names_test_b", source)
    yield a, b
    for name in ("names_test_a", "names_test_b"):
        sys.modules.pop(name, None)


def test_an_aggregate_names_its_events_unless_they_name_themselves() -> None:
    assert AGGREGATE_TYPES.name(Parcel) == "tests.Parcel"
    assert EVENT_TYPES.name(Parcel.Sent) == "tests.Parcel.Sent"
    assert EVENT_TYPES.name(Parcel.Delivered) == "tests.ParcelDelivered"
    # Without a declared name, a class is named by its qualified name, not its module.
    assert AGGREGATE_TYPES.name(Order) == "Order"
    assert EVENT_TYPES.name(Order.Placed) == "Order.Placed"


def test_names_aliases_and_module_paths_resolve_to_the_declared_class() -> None:
    for stored in (
        "tests.ParcelDelivered",
        "Delivered",
        f"{__name__}:Parcel.Delivered",
    ):
        assert EVENT_TYPES.resolve(stored) is Parcel.Delivered
    assert set(EVENT_TYPES.stored_names(Parcel.Delivered)) == {
        "tests.ParcelDelivered",
        "Delivered",
        f"{__name__}:Parcel.Delivered",
    }


def test_the_shops_topics_stored_before_its_modules_moved_still_resolve(
    mapper: PydanticMapper,
) -> None:
    """Rows written when the shop was ``domain.orders`` (module-path topics in the topic
    column and in a created event's originator_topic) decode to today's classes."""
    assert EVENT_TYPES.resolve("domain.orders:Order.Placed") is Order.Placed
    assert "domain.orders:Order.Placed" in EVENT_TYPES.stored_names(Order.Placed)
    order_id = uuid4()
    state = (
        '{"timestamp": "2026-01-02T03:04:05+00:00", "originator_topic": "domain.orders:Order",'
        ' "customer_id": "c1", "lines": [{"sku": "MUG-01", "quantity": 1, "unit_price": "2.50"}],'
        ' "total": "2.50", "currency": "EUR"}'
    )
    placed = mapper.to_domain_event(
        StoredEvent(order_id, 1, "domain.orders:Order.Placed", state.encode())
    )
    assert isinstance(placed, Order.Placed)
    order = placed.mutate(None)
    assert isinstance(order, Order)
    assert order.lines == (OrderLine(sku="MUG-01", quantity=1, unit_price=order.total),)
    assert order.currency is Currency.EUR


def test_the_log_stores_declared_names_and_decodes_them(mapper: PydanticMapper) -> None:
    parcel = Parcel(to="ada")
    parcel.deliver()
    sent, delivered = parcel.collect_events()
    stored = [mapper.to_stored_event(e) for e in (sent, delivered)]
    assert [s.topic for s in stored] == ["tests.Parcel.Sent", "tests.ParcelDelivered"]
    assert b'"originator_topic":"tests.Parcel"' in stored[0].state
    decoded = [mapper.to_domain_event(s) for s in stored]
    assert [type(d) for d in decoded] == [Parcel.Sent, Parcel.Delivered]
    rebuilt = decoded[1].mutate(decoded[0].mutate(None))
    assert isinstance(rebuilt, Parcel)
    assert (rebuilt.to, rebuilt.delivered) == ("ada", True)


def test_a_stored_topic_never_makes_a_module_import(
    mapper: PydanticMapper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "names_test_tripwire.py").write_text("IMPORTED = True\nclass Boom: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for topic in ("names_test_tripwire:Boom", "this:s"):
        with pytest.raises(EventDecodingError, match="unknown event type"):
            mapper.to_domain_event(StoredEvent(uuid4(), 1, topic, b"{}"))
    # Nor a created event's originator_topic.
    state = b'{"timestamp": "2026-01-02T03:04:05+00:00", "originator_topic": "names_test_tripwire:Boom", "to": "x"}'  # noqa: E501
    with pytest.raises(EventDecodingError, match="no aggregate type is declared"):
        mapper.to_domain_event(StoredEvent(uuid4(), 1, "tests.Parcel.Sent", state))
    assert "names_test_tripwire" not in sys.modules
    assert "this" not in sys.modules


def test_two_classes_under_one_name_are_refused_where_it_matters(
    two_modules: tuple[types.ModuleType, types.ModuleType], mapper: PydanticMapper
) -> None:
    a, b = two_modules
    with pytest.raises(TypeNameError, match=r"'Ledger.Opened' is declared by both names_test_a"):
        EVENT_TYPES.name(a.Ledger.Opened)
    with pytest.raises(TypeNameError, match=r"names_test_b:Ledger\.Opened"):
        EVENT_TYPES.resolve("Ledger.Opened")
    with pytest.raises(EventEncodingError, match=r"Ledger\.Opened"):
        mapper.to_stored_event(a.Ledger().collect_events()[0])
    # Their module paths still tell them apart.
    assert EVENT_TYPES.resolve("names_test_b:Ledger.Opened") is b.Ledger.Opened


def test_a_class_defined_again_at_the_same_place_takes_its_name_over() -> None:
    source = (
        "from eventkit.domain.model import Aggregate\n"
        "class Meter(Aggregate, type_name='tests.Meter'):\n"
        "    class Read(Aggregate.Event):\n"
        "        value: int\n"
    )
    first = module_with("names_test_reloaded", source)
    second = module_with("names_test_reloaded", source)  # a reload
    try:
        assert first.Meter is not second.Meter
        assert AGGREGATE_TYPES.resolve("tests.Meter") is second.Meter
        assert EVENT_TYPES.resolve("tests.Meter.Read") is second.Meter.Read
    finally:
        sys.modules.pop("names_test_reloaded", None)


def test_a_module_path_resolved_before_follows_a_redefinition_and_a_moved_module() -> None:
    """Module paths resolve through a cache (every save that creates an aggregate resolves
    one); what changes their meaning since must show."""
    source = (
        "from eventkit.domain.model import Aggregate\n"
        "class Gauge(Aggregate, type_name='tests.Gauge'):\n"
        "    class Set(Aggregate.Event):\n"
        "        value: int\n"
    )
    first = module_with("names_test_cached", source)
    try:
        assert AGGREGATE_TYPES.resolve("names_test_cached:Gauge") is first.Gauge
        assert AGGREGATE_TYPES.resolve("names_test_cached:Gauge") is first.Gauge  # cached
        second = module_with("names_test_cached", source)  # a reload
        assert AGGREGATE_TYPES.resolve("names_test_cached:Gauge") is second.Gauge
        with pytest.raises(UnknownTypeNameError):
            AGGREGATE_TYPES.resolve("names_test_gone:Gauge")
        moved_module("names_test_gone", "names_test_cached")
        assert AGGREGATE_TYPES.resolve("names_test_gone:Gauge") is second.Gauge
    finally:
        sys.modules.pop("names_test_cached", None)


def test_names_must_be_text() -> None:
    with pytest.raises(TypeNameError, match="non-empty string"):
        module_with(
            "names_test_bad",
            "from eventkit.domain.model import DomainEvent\n"
            "class Odd(DomainEvent, type_name=''):\n    pass\n",
        )
    sys.modules.pop("names_test_bad", None)
    with pytest.raises(UnknownTypeNameError, match="no event type is declared under the name"):
        EVENT_TYPES.resolve("Never.Declared")

"""StockItem: given its history, when a command, then new events (or an error and none)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from freezegun import freeze_time

from eventkit.domain.shop.errors import (
    DuplicateReservationError,
    InsufficientStockError,
    InvalidAmountError,
    InvalidQuantityError,
    UnknownReservationError,
)
from eventkit.domain.shop.stock import STOCK_ITEM_NAMESPACE, StockItem

ORDER_A = UUID("00000000-0000-4000-8000-00000000000a")
ORDER_B = UUID("00000000-0000-4000-8000-00000000000b")


def given(on_hand: int = 0, **reservations: int) -> StockItem:
    """A registered TEA-GREEN with ``on_hand`` received and reservations of ORDER_A/ORDER_B."""
    item = StockItem.register("TEA-GREEN", "Green tea", Decimal("6.90"))
    if on_hand:
        item.receive(on_hand)
    orders = {"a": ORDER_A, "b": ORDER_B}
    for key, quantity in reservations.items():
        item.reserve(orders[key], quantity)
    item.collect_events()
    return item


def replayed(item: StockItem) -> StockItem:
    """The item rebuilt from all of its events, as the application loads it."""
    events = item.collect_events()
    rebuilt: StockItem | None = None
    for event in events:
        rebuilt = event.mutate(rebuilt)
    assert rebuilt is not None
    return rebuilt


def test_register_emits_registered_with_id_from_sku() -> None:
    item = StockItem.register("TEA-GREEN", "Green tea", Decimal("6.90"))

    [event] = item.collect_events()
    assert isinstance(event, StockItem.Registered)
    assert (event.sku, event.name, event.unit_price) == ("TEA-GREEN", "Green tea", Decimal("6.90"))
    assert item.id == StockItem.id_for("TEA-GREEN")
    assert item.id.version == 5
    assert StockItem.id_for("TEA-GREEN") != StockItem.id_for("TEA-BLACK")
    assert STOCK_ITEM_NAMESPACE.version == 4
    assert (item.on_hand, item.reserved, item.available) == (0, 0, 0)


@pytest.mark.parametrize("price", [Decimal(0), Decimal("-0.01")])
def test_register_rejects_a_price_that_is_not_positive(price: Decimal) -> None:
    with pytest.raises(InvalidAmountError, match=rf"unit price of 'TEA-GREEN'.*got {price}"):
        StockItem.register("TEA-GREEN", "Green tea", price)


def test_receive_emits_received_and_adds_to_on_hand() -> None:
    item = given(on_hand=5)

    item.receive(7)

    [event] = item.collect_events()
    assert isinstance(event, StockItem.Received)
    assert event.quantity == 7
    assert event.originator_version == 3
    assert (item.on_hand, item.available) == (12, 12)


@pytest.mark.parametrize("quantity", [0, -3])
def test_receive_rejects_a_quantity_below_one(quantity: int) -> None:
    item = given(on_hand=5)

    with pytest.raises(InvalidQuantityError, match=rf"receipt of 'TEA-GREEN'.*got {quantity}"):
        item.receive(quantity)

    assert item.collect_events() == []
    assert item.on_hand == 5


def test_reserve_emits_reserved_and_sets_units_aside() -> None:
    item = given(on_hand=10)

    item.reserve(ORDER_A, 4)

    [event] = item.collect_events()
    assert isinstance(event, StockItem.Reserved)
    assert (event.order_id, event.quantity) == (ORDER_A, 4)
    assert (item.on_hand, item.reserved, item.available) == (10, 4, 6)


def test_reserve_may_take_every_available_unit() -> None:
    item = given(on_hand=10, a=4)

    item.reserve(ORDER_B, 6)

    assert (item.on_hand, item.reserved, item.available) == (10, 10, 0)


def test_reserve_more_than_available_fails_naming_sku_requested_and_available() -> None:
    item = given(on_hand=10, a=4)

    with pytest.raises(InsufficientStockError) as raised:
        item.reserve(ORDER_B, 7)

    error = raised.value
    assert (error.sku, error.order_id, error.requested, error.available) == (
        "TEA-GREEN",
        ORDER_B,
        7,
        6,
    )
    assert str(error) == (
        f"insufficient stock of 'TEA-GREEN' for order {ORDER_B}: requested 7, available 6"
    )
    assert item.collect_events() == []
    assert (item.reserved, item.available) == (4, 6)


def test_a_second_reservation_for_the_same_order_fails() -> None:
    item = given(on_hand=10, a=4)

    with pytest.raises(DuplicateReservationError, match=rf"order {ORDER_A} already holds .* 4 "):
        item.reserve(ORDER_A, 1)

    assert item.collect_events() == []
    assert item.reservations == {ORDER_A: 4}


@pytest.mark.parametrize("quantity", [0, -1])
def test_reserve_rejects_a_quantity_below_one(quantity: int) -> None:
    item = given(on_hand=10)

    with pytest.raises(InvalidQuantityError, match=rf"reservation of 'TEA-GREEN'.*got {quantity}"):
        item.reserve(ORDER_A, quantity)

    assert item.collect_events() == []


def test_release_emits_released_and_gives_units_back() -> None:
    item = given(on_hand=10, a=4, b=2)

    item.release(ORDER_A)

    [event] = item.collect_events()
    assert isinstance(event, StockItem.Released)
    assert (event.order_id, event.quantity) == (ORDER_A, 4)
    assert (item.on_hand, item.reserved, item.available) == (10, 2, 8)


def test_release_without_a_reservation_fails() -> None:
    item = given(on_hand=10, b=2)

    with pytest.raises(UnknownReservationError, match=rf"order {ORDER_A} holds no reservation"):
        item.release(ORDER_A)

    assert item.collect_events() == []


def test_commit_reservation_emits_committed_and_takes_units_off_hand() -> None:
    item = given(on_hand=10, a=4, b=2)

    item.commit_reservation(ORDER_A)

    [event] = item.collect_events()
    assert isinstance(event, StockItem.ReservationCommitted)
    assert (event.order_id, event.quantity) == (ORDER_A, 4)
    assert (item.on_hand, item.reserved, item.available) == (6, 2, 4)


def test_commit_reservation_without_a_reservation_fails() -> None:
    item = given(on_hand=10)

    with pytest.raises(UnknownReservationError, match="'TEA-GREEN'"):
        item.commit_reservation(uuid4())

    assert item.collect_events() == []
    assert item.on_hand == 10


def test_a_released_reservation_cannot_be_committed() -> None:
    item = given(on_hand=10, a=4)
    item.release(ORDER_A)
    item.collect_events()

    with pytest.raises(UnknownReservationError):
        item.commit_reservation(ORDER_A)


def test_on_hand_never_drops_below_reserved() -> None:
    item = given(on_hand=3)
    for quantity in (1, 1, 1):
        item.reserve(uuid4(), quantity)
    for order_id in list(item.reservations):
        item.commit_reservation(order_id)
        assert item.on_hand >= item.reserved >= 0
    with pytest.raises(InsufficientStockError):
        item.reserve(uuid4(), 1)
    assert (item.on_hand, item.reserved) == (0, 0)


def test_replaying_the_events_gives_the_same_state() -> None:
    item = StockItem.register("TEA-GREEN", "Green tea", Decimal("6.90"))
    item.receive(10)
    item.reserve(ORDER_A, 4)
    item.reserve(ORDER_B, 3)
    item.commit_reservation(ORDER_A)
    item.release(ORDER_B)

    rebuilt = replayed(item)

    assert (rebuilt.sku, rebuilt.name, rebuilt.unit_price) == (item.sku, item.name, item.unit_price)
    assert (rebuilt.on_hand, rebuilt.reservations) == (item.on_hand, item.reservations) == (6, {})
    assert (rebuilt.id, rebuilt.version) == (item.id, item.version)


def test_event_timestamps_are_aware_and_taken_when_the_command_runs() -> None:
    item = given(on_hand=1)

    with freeze_time("2024-05-01 12:30:00"):
        item.receive(2)

    [event] = item.collect_events()
    assert event.timestamp == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert event.timestamp.utcoffset() is not None
    assert item.modified_on == event.timestamp


def test_a_deep_copy_is_independent() -> None:
    item = given(on_hand=10, a=4)

    clone = copy.deepcopy(item)
    clone.reserve(ORDER_B, 1)

    assert item.reservations == {ORDER_A: 4}
    assert clone.reservations == {ORDER_A: 4, ORDER_B: 1}
    assert item.collect_events() == []
    assert len(clone.collect_events()) == 1
    assert (clone.id, clone.sku, clone.unit_price) == (item.id, item.sku, item.unit_price)

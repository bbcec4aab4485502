"""The stock item aggregate: how many units of one sku the shop holds, and for whom.

Units on hand are either reserved for an order or available. Reserving takes available
units; releasing gives them back; committing a reservation (the order shipped) takes the
units off the shelf. Invariant: ``on_hand >= reserved >= 0``.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import event

from eventkit.domain.model import Aggregate
from eventkit.domain.names import moved_module
from eventkit.domain.shop.errors import (
    DuplicateReservationError,
    InsufficientStockError,
    InvalidAmountError,
    InvalidQuantityError,
    UnknownReservationError,
)

#: Stock item ids are uuid5(STOCK_ITEM_NAMESPACE, sku): one stream per sku, found by its sku.
STOCK_ITEM_NAMESPACE = UUID("6f1d3c0e-4a39-4c59-9a2e-5b8d2f0e7c11")


class StockItem(Aggregate):
    """One sku: its name, unit price, units on hand and reservations per order."""

    @staticmethod
    def create_id(sku: str, **_: Any) -> UUID:
        return uuid5(STOCK_ITEM_NAMESPACE, sku)

    @staticmethod
    def id_for(sku: str) -> UUID:
        """The id of the stock item registered under ``sku``."""
        return uuid5(STOCK_ITEM_NAMESPACE, sku)

    class Registered(Aggregate.Created):
        sku: str
        name: str
        unit_price: Decimal

    class Received(Aggregate.Event):
        quantity: int

    class Reserved(Aggregate.Event):
        order_id: UUID
        quantity: int

    class Released(Aggregate.Event):
        order_id: UUID
        quantity: int

    class ReservationCommitted(Aggregate.Event):
        order_id: UUID
        quantity: int

    @event(Registered)
    def __init__(self, sku: str, name: str, unit_price: Decimal) -> None:
        self.sku = sku
        self.name = name
        self.unit_price = unit_price
        self.on_hand = 0
        self.reservations: dict[UUID, int] = {}

    @classmethod
    def register(cls, sku: str, name: str, unit_price: Decimal) -> StockItem:
        """Register a new sku, with nothing on hand."""
        if unit_price <= 0:
            raise InvalidAmountError(f"unit price of {sku!r}", unit_price)
        return cls(sku=sku, name=name, unit_price=unit_price)

    def __deepcopy__(self, memo: dict[int, Any]) -> StockItem:
        """A deep copy whose reservations share their (immutable) order ids.

        The application copies a busy stock item on every load, and deep-copying each
        UUID key one by one would be most of that cost.
        """
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for name, value in vars(self).items():
            is_reservations = name == "reservations"
            clone.__dict__[name] = dict(value) if is_reservations else copy.deepcopy(value, memo)
        return clone

    @property
    def reserved(self) -> int:
        return sum(self.reservations.values())

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def receive(self, quantity: int) -> None:
        """Put ``quantity`` more units on hand."""
        if quantity < 1:
            raise InvalidQuantityError(f"receipt of {self.sku!r}", quantity)
        self._received(quantity=quantity)

    def reserve(self, order_id: UUID, quantity: int) -> None:
        """Set ``quantity`` available units aside for an order (one reservation per order)."""
        if quantity < 1:
            raise InvalidQuantityError(f"reservation of {self.sku!r}", quantity)
        held = self.reservations.get(order_id)
        if held is not None:
            raise DuplicateReservationError(self.sku, order_id, held)
        if quantity > self.available:
            raise InsufficientStockError(self.sku, order_id, quantity, self.available)
        self._reserved(order_id=order_id, quantity=quantity)

    def release(self, order_id: UUID) -> None:
        """Give an order's reserved units back (the order was cancelled)."""
        self._require_reservation(order_id)
        self._released(order_id=order_id, quantity=self.reservations[order_id])

    def commit_reservation(self, order_id: UUID) -> None:
        """Take an order's reserved units off hand (the order shipped)."""
        self._require_reservation(order_id)
        self._reservation_committed(order_id=order_id, quantity=self.reservations[order_id])

    def _require_reservation(self, order_id: UUID) -> None:
        if order_id not in self.reservations:
            raise UnknownReservationError(self.sku, order_id)

    # The decorated methods below also run when the item is replayed from its events, so
    # they only change state; the checks live in the public methods above.

    @event(Received)
    def _received(self, quantity: int) -> None:
        self.on_hand += quantity

    @event(Reserved)
    def _reserved(self, order_id: UUID, quantity: int) -> None:
        self.reservations[order_id] = quantity

    @event(Released)
    def _released(self, order_id: UUID, quantity: int) -> None:
        del self.reservations[order_id]

    @event(ReservationCommitted)
    def _reservation_committed(self, order_id: UUID, quantity: int) -> None:
        del self.reservations[order_id]
        self.on_hand -= quantity


# Before eventkit 0.2 this module was domain.stock, and the log named its events by module
# path: those rows still resolve.
moved_module("domain.stock", __name__)

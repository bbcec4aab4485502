"""StockLevels: units on hand, reserved and available per sku."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from eventkit.domain.shop.stock import StockItem
from eventkit.projections.projection import Context, Projection, Table, handles
from eventkit.projections.queries import Queries


class StockLevels(Projection):
    name = "stock_levels"
    tables = (
        Table(
            "stock_levels",
            "CREATE TABLE {table} ("
            " sku text PRIMARY KEY,"
            " stock_item_id uuid NOT NULL UNIQUE,"
            " name text NOT NULL,"
            " unit_price numeric NOT NULL,"
            " on_hand integer NOT NULL,"
            " reserved integer NOT NULL,"
            " version bigint NOT NULL)",
        ),
    )

    @handles
    def registered(self, event: StockItem.Registered, context: Context) -> None:
        context.execute(
            "INSERT INTO {stock_levels} (sku, stock_item_id, name, unit_price, on_hand, reserved,"
            " version) VALUES (%s, %s, %s, %s, 0, 0, %s)",
            (
                event.sku,
                event.originator_id,
                event.name,
                event.unit_price,
                event.originator_version,
            ),
        )

    @handles
    def received(self, event: StockItem.Received, context: Context) -> None:
        self._change(context, event, on_hand=event.quantity, reserved=0)

    @handles
    def reserved(self, event: StockItem.Reserved, context: Context) -> None:
        self._change(context, event, on_hand=0, reserved=event.quantity)

    @handles
    def released(self, event: StockItem.Released, context: Context) -> None:
        self._change(context, event, on_hand=0, reserved=-event.quantity)

    @handles
    def reservation_committed(
        self, event: StockItem.ReservationCommitted, context: Context
    ) -> None:
        self._change(context, event, on_hand=-event.quantity, reserved=-event.quantity)

    @staticmethod
    def _change(context: Context, event: StockItem.Event, *, on_hand: int, reserved: int) -> None:
        context.execute(
            "UPDATE {stock_levels} SET on_hand = on_hand + %s, reserved = reserved + %s,"
            " version = %s WHERE stock_item_id = %s AND version = %s",
            (
                on_hand,
                reserved,
                event.originator_version,
                event.originator_id,
                event.originator_version - 1,
            ),
            expect_rows=1,
            otherwise=lambda _: LookupError(
                f"stock item {event.originator_id}: {type(event).__qualname__} at version "
                f"{event.originator_version} does not follow the version in the view"
            ),
        )


@dataclass(frozen=True)
class StockLevel:
    sku: str
    name: str
    unit_price: Decimal
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class StockLevelQueries(Queries):
    """Stock per sku."""

    projection = StockLevels

    def get(
        self, sku: str, *, wait_for: int | None = None, timeout: float = 5.0
    ) -> StockLevel | None:
        rows = self.fetch(
            "SELECT sku, name, unit_price, on_hand, reserved FROM {stock_levels} WHERE sku = %s",
            (sku,),
            wait_for=wait_for,
            timeout=timeout,
        )
        return StockLevel(*rows[0]) if rows else None

    def all(self) -> list[StockLevel]:
        rows = self.fetch(
            "SELECT sku, name, unit_price, on_hand, reserved FROM {stock_levels} ORDER BY sku"
        )
        return [StockLevel(*r) for r in rows]

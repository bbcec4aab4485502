"""The example shop's application service: commands in, events recorded atomically.

Each command loads the aggregates it concerns, calls their command methods (which check
their invariants and raise a :class:`~domain.errors.DomainError` before emitting anything)
and records every new event in one ``save``: all of them or none. When another writer
appended to one of the same streams first, the save fails with eventsourcing's
``IntegrityError`` and the whole command runs again on freshly loaded aggregates, a bounded
number of times. The shop gets its persistence from the ``env`` its caller passes and knows
nothing of where events are stored.

Stock items are loaded through eventkit's aggregate cache (``cached_kinds``): a popular
item's stream grows by a few events per order, and replaying all of it on every command
made each order cost time in proportion to the shop's history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar
from uuid import UUID

from eventkit.domain.application import Application
from eventkit.domain.model import Aggregate
from eventkit.domain.shop.commands import (
    CancelOrder,
    CapturePayment,
    Command,
    FailPayment,
    PlaceOrder,
    ReceiveStock,
    RegisterStockItem,
    ShipOrder,
)
from eventkit.domain.shop.errors import (
    StockItemAlreadyRegisteredError,
    UnknownOrderError,
    UnknownPaymentError,
    UnknownStockItemError,
)
from eventkit.domain.shop.orders import Currency, Order, OrderLine, OrderStatus
from eventkit.domain.shop.payments import Payment, PaymentStatus
from eventkit.domain.shop.stock import StockItem

logger = logging.getLogger(__name__)

_Aggregates = TypeVar("_Aggregates", bound=tuple[Aggregate, ...])
_Aggregate = TypeVar("_Aggregate", bound=Aggregate)


@dataclass(frozen=True)
class CommandResult:
    """What a command recorded.

    ``notification_id`` is the notification id of the last event the command wrote;
    ``retries`` how many times it ran again after a concurrency conflict.
    """

    notification_id: int
    aggregate_ids: tuple[UUID, ...]
    retries: int


@dataclass(frozen=True)
class OrderPlacement(CommandResult):
    """What :meth:`Shop.place_order` recorded, with the new order's and payment's ids."""

    order_id: UUID
    payment_id: UUID


@dataclass(frozen=True)
class StockView:
    sku: str
    name: str
    unit_price: Decimal
    on_hand: int
    reserved: int
    available: int
    version: int


@dataclass(frozen=True)
class OrderView:
    order_id: UUID
    customer_id: str
    lines: tuple[OrderLine, ...]
    total: Decimal
    currency: Currency
    status: OrderStatus
    payment_id: UUID
    cancellation_reason: str | None
    version: int


@dataclass(frozen=True)
class PaymentView:
    payment_id: UUID
    order_id: UUID
    amount: Decimal
    currency: Currency
    status: PaymentStatus
    failure_reason: str | None
    version: int


class Shop(Application):
    """Sells stock items: registers and receives stock, takes orders, payments, shipments."""

    name = "Shop"
    #: The currency of every price, order and payment of this shop.
    currency = Currency.EUR
    #: A popular stock item's stream grows by a few events per order: keep stock items.
    cached_kinds = (StockItem,)

    # -- commands ----------------------------------------------------------------------------

    def register_stock_item(self, command: RegisterStockItem) -> CommandResult:
        """Register a new sku; fails if it is registered already."""

        def decide() -> tuple[StockItem]:
            stock_item_id = StockItem.id_for(command.sku)
            if self.find(stock_item_id, StockItem) is not None:
                raise StockItemAlreadyRegisteredError(command.sku, stock_item_id)
            return (StockItem.register(command.sku, command.name, command.unit_price),)

        return self._execute(command, decide)[1]

    def receive_stock(self, command: ReceiveStock) -> CommandResult:
        """Put more units of a sku on hand."""

        def decide() -> tuple[StockItem]:
            stock_item = self._stock_item(command.sku)
            stock_item.receive(command.quantity)
            return (stock_item,)

        return self._execute(command, decide)[1]

    def place_order(self, command: PlaceOrder) -> OrderPlacement:
        """Place an order, reserve stock for every line and request its payment, atomically.

        Fails with UnknownStockItemError or InsufficientStockError, writing nothing, when any
        line cannot be reserved.
        """

        def decide() -> tuple[Order, Payment, *tuple[StockItem, ...]]:
            stock_items = [self._stock_item(line.sku) for line in command.lines]
            order = Order.place(
                command.customer_id,
                (
                    OrderLine(sku=line.sku, quantity=line.quantity, unit_price=item.unit_price)
                    for line, item in zip(command.lines, stock_items, strict=True)
                ),
                self.currency,
            )
            for line, item in zip(command.lines, stock_items, strict=True):
                item.reserve(order.id, line.quantity)
            payment = Payment.request(order.id, order.total, order.currency)
            return (order, payment, *stock_items)

        (order, payment, *_), result = self._execute(command, decide)
        return OrderPlacement(
            notification_id=result.notification_id,
            aggregate_ids=result.aggregate_ids,
            retries=result.retries,
            order_id=order.id,
            payment_id=payment.id,
        )

    def capture_payment(self, command: CapturePayment) -> CommandResult:
        """Capture a requested payment and mark its order paid."""

        def decide() -> tuple[Payment, Order]:
            payment = self._payment(command.payment_id)
            order = self._order(payment.order_id)
            payment.capture()
            order.mark_paid(payment.id)
            return (payment, order)

        return self._execute(command, decide)[1]

    def fail_payment(self, command: FailPayment) -> CommandResult:
        """Fail a requested payment, cancel its order and release the order's stock."""

        def decide() -> tuple[Payment, Order, *tuple[StockItem, ...]]:
            payment = self._payment(command.payment_id)
            order = self._order(payment.order_id)
            payment.fail(command.reason)
            order.cancel(f"payment failed: {command.reason}")
            return (payment, order, *self._release_stock(order))

        return self._execute(command, decide)[1]

    def ship_order(self, command: ShipOrder) -> CommandResult:
        """Ship a paid order: its reserved units leave the shelf."""

        def decide() -> tuple[Order, *tuple[StockItem, ...]]:
            order = self._order(command.order_id)
            order.ship()
            stock_items = [self._stock_item(sku) for sku in order.skus]
            for item in stock_items:
                item.commit_reservation(order.id)
            return (order, *stock_items)

        return self._execute(command, decide)[1]

    def cancel_order(self, command: CancelOrder) -> CommandResult:
        """Cancel an unpaid order: its payment fails and its stock is released.

        Only a placed, unpaid order can be cancelled: undoing a captured payment needs a
        refund, which this shop does not model, so cancelling a paid or shipped order
        raises IllegalTransitionError.
        """

        def decide() -> tuple[Order, Payment, *tuple[StockItem, ...]]:
            order = self._order(command.order_id)
            order.cancel(command.reason)
            payment = self._payment(Payment.id_for(order.id))
            payment.fail(f"order cancelled: {command.reason}")
            return (order, payment, *self._release_stock(order))

        return self._execute(command, decide)[1]

    # -- queries -------------------------------------------------------------------------------

    def get_stock(self, sku: str) -> StockView:
        item = self._stock_item(sku)
        return StockView(
            sku=item.sku,
            name=item.name,
            unit_price=item.unit_price,
            on_hand=item.on_hand,
            reserved=item.reserved,
            available=item.available,
            version=item.version,
        )

    def get_order(self, order_id: UUID) -> OrderView:
        order = self._order(order_id)
        return OrderView(
            order_id=order.id,
            customer_id=order.customer_id,
            lines=order.lines,
            total=order.total,
            currency=order.currency,
            status=order.status,
            payment_id=Payment.id_for(order.id),
            cancellation_reason=order.cancellation_reason,
            version=order.version,
        )

    def get_payment(self, payment_id: UUID) -> PaymentView:
        payment = self._payment(payment_id)
        return PaymentView(
            payment_id=payment.id,
            order_id=payment.order_id,
            amount=payment.amount,
            currency=payment.currency,
            status=payment.status,
            failure_reason=payment.failure_reason,
            version=payment.version,
        )

    # -- helpers -------------------------------------------------------------------------------

    def _execute(
        self, command: Command, decide: Callable[[], _Aggregates]
    ) -> tuple[_Aggregates, CommandResult]:
        """Run ``decide`` and save the aggregates it returns; run again on a conflict."""
        outcome = self.run(decide, command)
        result = CommandResult(
            notification_id=outcome.notification_id,
            aggregate_ids=tuple(aggregate.id for aggregate in outcome.aggregates),
            retries=outcome.retries,
        )
        return outcome.aggregates, result

    def _release_stock(self, order: Order) -> list[StockItem]:
        stock_items = [self._stock_item(sku) for sku in order.skus]
        for item in stock_items:
            item.release(order.id)
        return stock_items

    def _stock_item(self, sku: str) -> StockItem:
        item = self.find(StockItem.id_for(sku), StockItem)
        if item is None:
            raise UnknownStockItemError(sku)
        return item

    def _order(self, order_id: UUID) -> Order:
        order = self.find(order_id, Order)
        if order is None:
            raise UnknownOrderError(order_id)
        return order

    def _payment(self, payment_id: UUID) -> Payment:
        payment = self.find(payment_id, Payment)
        if payment is None:
            raise UnknownPaymentError(payment_id)
        return payment

"""Handlers of projections and reactions: ``@handles``, base classes, and what is read."""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any

import pytest

from eventkit.domain.names import EVENT_TYPES
from eventkit.domain.shop.orders import Order
from eventkit.domain.shop.payments import Payment
from eventkit.projections.projection import (
    Consumer,
    Context,
    Projection,
    UnhandledEventError,
    handles,
)
from eventkit.projections.reaction import Reaction, ReactionContext


class OrderLog(Projection):
    name = "order_log"

    @handles
    def any_order_event(self, event: Order.Event, context: Context) -> None:
        pass

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        pass


class Notices(Reaction):
    name = "notices"

    @handles(Order.Shipped, Payment.Failed)
    def notice(self, event: Any, context: ReactionContext) -> None:
        pass


def test_a_handler_of_a_base_class_receives_its_subclasses_events() -> None:
    assert OrderLog.handler(Order.Paid) is OrderLog.any_order_event
    assert OrderLog.handler(Order.Cancelled) is OrderLog.any_order_event
    # The most specific handler wins.
    assert OrderLog.handler(Order.Placed) is OrderLog.placed


def test_the_follower_reads_every_declared_subclass_of_a_handled_class() -> None:
    topics = set(OrderLog.topics())
    for event_class in (Order.Placed, Order.Paid, Order.Shipped, Order.Cancelled):
        assert EVENT_TYPES.name(event_class) in topics
    assert EVENT_TYPES.name(Payment.Requested) not in topics


def test_handles_with_types_names_each_type() -> None:
    assert set(Notices.event_types()) == {Order.Shipped, Payment.Failed}
    # A reaction's handler runs inside its event's metadata (Reaction.handler wraps it).
    assert Notices.handler(Payment.Failed).__wrapped__ is Notices.notice  # type: ignore[attr-defined]


def test_an_event_without_a_handler_raises_naming_the_consumer() -> None:
    handler = Notices.handler(Order.Placed)
    with pytest.raises(UnhandledEventError, match="reaction 'notices' has no handler for"):
        handler(Notices(), object(), None)


def test_a_type_handled_twice_is_refused() -> None:
    class Twice(Projection):
        name = "twice"

        @handles
        def one(self, event: Order.Paid, context: Context) -> None:
            pass

        @handles(Order.Paid)
        def two(self, event: Any, context: Context) -> None:
            pass

    with pytest.raises(TypeError, match=r"handles Order.Paid twice: in one\(\) and in two\(\)"):
        Twice.handlers()


def test_an_unannotated_handler_is_refused_with_what_to_do() -> None:
    class Unannotated(Projection):
        name = "unannotated"

        @handles
        def paid(self, event, context):  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(TypeError, match="annotate its 'event' parameter"):
        Unannotated.handlers()

    class WrongShape(Projection):
        name = "wrong_shape"

        @handles
        def paid(self, event: Order.Paid) -> None:
            pass

    with pytest.raises(TypeError, match=r"must take \(self, event, context\)"):
        WrongShape.handlers()


def test_a_subclass_inherits_and_may_override_handlers() -> None:
    class MoreOrders(OrderLog):
        name = "more_orders"

        @handles
        def placed(self, event: Order.Placed, context: Context) -> None:
            pass

    assert MoreOrders.handler(Order.Placed) is MoreOrders.placed
    assert MoreOrders.handler(Order.Paid) is OrderLog.any_order_event


def test_singledispatchmethod_handlers_written_for_eventsourcing_still_work() -> None:
    class Legacy(Projection):
        name = "legacy"

        @singledispatchmethod
        def apply(self, event: object, context: Context) -> None:
            raise UnhandledEventError(self, event)

        @apply.register
        def _(self, event: Order.Paid, context: Context) -> None:
            pass

    assert Legacy.event_types() == [Order.Paid]
    assert EVENT_TYPES.name(Order.Paid) in Legacy.topics()


def test_construct_defaults_to_calling_the_class() -> None:
    assert isinstance(OrderLog.construct(object()), OrderLog)
    assert issubclass(OrderLog, Consumer)
    assert OrderLog.start_from == "origin"
    assert Notices.start_from == "head"

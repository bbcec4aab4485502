"""The base classes of eventkit's domain model: pydantic events on eventsourcing aggregates.

A domain event is a frozen pydantic v2 model. An aggregate is an eventsourcing aggregate
whose events derive from ``Aggregate.Event`` (and its first event from
``Aggregate.Created``); command methods decorated with eventsourcing's ``@event`` emit them.
This module knows nothing of storage.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID, uuid4

from eventsourcing.domain import BaseAggregate, CanInitAggregate, CanMutateAggregate
from pydantic import BaseModel, ConfigDict

from eventkit.domain.names import AGGREGATE_TYPES, EVENT_TYPES, TypeNames
from eventkit.domain.personal import PersonalData, placeholders


def _declare(
    registry: TypeNames, cls: type[Any], type_name: str | None, aliases: Iterable[str]
) -> None:
    """Declare ``cls``; a class that eventsourcing (or a reload) defines again at the same
    module and qualified name keeps the name and aliases the first one declared."""
    if type_name is None:
        for base in cls.__bases__:
            if registry.is_explicit(base) and (base.__module__, base.__qualname__) == (
                cls.__module__,
                cls.__qualname__,
            ):
                type_name = registry.declared_name(base)
                aliases = registry.stored_names(base)
    registry.declare(cls, type_name, aliases)


class Immutable(BaseModel):
    """A frozen value: it cannot change after it is made, and unknown fields are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DomainEvent(Immutable):
    """Something that happened to one aggregate, at a version of its stream.

    Each subclass is declared under a stable type name, the one the log stores
    (:mod:`eventkit.domain.names`): its qualified name by default, or
    ``class Placed(Order.Event, type_name="...", aliases=(...))``.
    """

    originator_id: UUID
    originator_version: int
    timestamp: datetime

    #: The fields that hold a person's data, encrypted with a key of that person's own
    #: (:mod:`eventkit.domain.personal`); None when the event holds none.
    personal_data: ClassVar[PersonalData | None] = None

    def __init_subclass__(
        cls, *, type_name: str | None = None, aliases: Iterable[str] = (), **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        _declare(EVENT_TYPES, cls, type_name, aliases)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        placeholders(cls)  # a wrong personal_data fails here, where the class is defined


class Aggregate(BaseAggregate[UUID]):
    """An event-sourced aggregate with pydantic events.

    Each subclass is declared under a stable type name, the one its created event stores
    (:mod:`eventkit.domain.names`): its qualified name by default, or
    ``class Order(Aggregate, type_name="...", aliases=(...))``.
    """

    def __init_subclass__(
        cls, *, type_name: str | None = None, aliases: Iterable[str] = (), **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        _declare(AGGREGATE_TYPES, cls, type_name, aliases)
        # The aggregate's events (eventsourcing has redefined them by now) are named
        # after it unless they name themselves.
        prefix = AGGREGATE_TYPES.declared_name(cls)
        for attribute in vars(cls).values():
            if (
                isinstance(attribute, type)
                and issubclass(attribute, DomainEvent)
                and attribute.__qualname__ == f"{cls.__qualname__}.{attribute.__name__}"
            ):
                EVENT_TYPES.declare_default(attribute, f"{prefix}.{attribute.__name__}")

    #: The attributes that hold a person's data, for the aggregate's snapshots
    #: (:mod:`eventkit.domain.personal`); an aggregate whose events hold personal data
    #: must declare it to be snapshotted.
    personal_data: ClassVar[PersonalData | None] = None

    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        return uuid4()

    class Event(DomainEvent, CanMutateAggregate[UUID]):
        """An event of this aggregate."""

    class Created(Event, CanInitAggregate[UUID]):
        """The first event of this aggregate."""

        originator_topic: str

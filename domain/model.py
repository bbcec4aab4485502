"""The base classes of eventkit's domain model: pydantic events on eventsourcing aggregates.

A domain event is a frozen pydantic v2 model. An aggregate is an eventsourcing aggregate
whose events derive from ``Aggregate.Event`` (and its first event from
``Aggregate.Created``); command methods decorated with eventsourcing's ``@event`` emit them.
This module knows nothing of storage.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import BaseAggregate, CanInitAggregate, CanMutateAggregate
from pydantic import BaseModel, ConfigDict


class Immutable(BaseModel):
    """A frozen value: it cannot change after it is made, and unknown fields are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DomainEvent(Immutable):
    """Something that happened to one aggregate, at a version of its stream."""

    originator_id: UUID
    originator_version: int
    timestamp: datetime


class Aggregate(BaseAggregate[UUID]):
    """An event-sourced aggregate with pydantic events."""

    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        return uuid4()

    class Event(DomainEvent, CanMutateAggregate[UUID]):
        """An event of this aggregate."""

    class Created(Event, CanInitAggregate[UUID]):
        """The first event of this aggregate."""

        originator_topic: str

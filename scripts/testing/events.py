"""Events for tests: new ones numbered per stream, expected ones stated in part, and the
readable difference between what was expected and what happened.

```python
placed = new_event(Order.Placed, order_id, customer_id="ada", lines=LINES, total=..., ...)
paid = new_event(Order.Paid, order_id, payment_id=payment_id)   # version 2 of order_id
expect(Order.Paid, payment_id=payment_id)                       # type and one field
```
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.utils import get_topic
from pydantic import BaseModel

from eventkit.domain.model import Aggregate, DomainEvent
from eventkit.domain.names import AGGREGATE_TYPES, EVENT_TYPES, TypeNameError
from eventkit.infrastructure.log import LoggedNotification
from eventkit.infrastructure.transcoding import PydanticMapper

#: The fields eventsourcing sets on every event; compared only when a test states them.
ORIGINATOR_FIELDS = ("originator_id", "originator_version", "timestamp", "originator_topic")


def type_name(cls: type[Any]) -> str:
    """The name the log stores for an event class (its qualified name if undeclared)."""
    try:
        return EVENT_TYPES.name(cls)
    except TypeNameError:
        return cls.__qualname__


@dataclass(frozen=True)
class NewEvent:
    """An event to be given to a scenario, not yet numbered: the scenario gives it the next
    version of its stream, the current time (freezegun's, when time is frozen) and, for
    an aggregate's first event, the aggregate's topic. Made by :func:`new_event`."""

    cls: type[DomainEvent]
    originator_id: UUID | None
    fields: Mapping[str, Any]
    timestamp: datetime | None = None

    def numbered(self, originator_id: UUID, version: int) -> DomainEvent:
        """The event at ``version`` of stream ``originator_id``, validated by its model."""
        values: dict[str, Any] = {
            "originator_id": originator_id,
            "originator_version": version,
            "timestamp": self.timestamp or _now(self.cls),
            **self.fields,
        }
        if "originator_topic" in self.cls.model_fields and "originator_topic" not in values:
            values["originator_topic"] = get_topic(aggregate_of(self.cls))
        return self.cls(**values)


def new_event(
    cls: type[DomainEvent],
    originator_id: UUID | None = None,
    /,
    *,
    timestamp: datetime | None = None,
    **fields: Any,
) -> NewEvent:
    """An event of class ``cls`` with ``fields``, for stream ``originator_id``, that the
    scenario it is given to numbers: the next version of that stream, the time when it is
    given (or ``timestamp``). An aggregate scenario's stream is the default stream."""
    unknown = sorted(set(fields) - set(cls.model_fields))
    if unknown:
        raise TypeError(
            f"{type_name(cls)} has no field(s) {', '.join(unknown)}; its fields: "
            f"{', '.join(cls.model_fields)}"
        )
    return NewEvent(cls, originator_id, dict(fields), timestamp)


def aggregate_of(cls: type[DomainEvent]) -> type[Aggregate]:
    """The aggregate class that declares event class ``cls``."""
    for aggregate in AGGREGATE_TYPES.declared():
        if any(value is cls for value in vars(aggregate).values()):
            return aggregate
    raise TypeError(
        f"no declared aggregate defines {type_name(cls)}: pass originator_topic= to new_event"
    )


def _now(cls: type[DomainEvent]) -> datetime:
    create = getattr(cls, "create_timestamp", None)
    if create is None:  # pragma: no cover - every Aggregate.Event has it
        raise TypeError(f"{type_name(cls)} cannot make its timestamp: pass timestamp=")
    moment: datetime = create()
    return moment


#: What a scenario may be given: events, events to number, or aggregates whose pending
#: (not yet collected) events are taken.
Given = DomainEvent | NewEvent | Aggregate


class Streams:
    """The versions given so far per stream, and the log positions handed out: what a
    scenario needs to number new events and to log them as the store would."""

    def __init__(self, default_stream: UUID | None = None) -> None:
        self.default_stream = default_stream
        self.versions: dict[UUID, int] = {}
        self.last_id = 0

    def events(self, given: Iterable[Given]) -> list[DomainEvent]:
        """The events of ``given``, numbered, with each version checked to follow its
        stream's last one."""
        found: list[DomainEvent] = []
        for item in given:
            if isinstance(item, Aggregate):
                found.extend(self._checked(e) for e in item.collect_events())  # type: ignore[arg-type]
            elif isinstance(item, NewEvent):
                stream = item.originator_id or self.default_stream
                if stream is None:
                    raise TypeError(
                        f"new_event({type_name(item.cls)}, ...) names no stream: pass its "
                        "originator id as the first argument after the class"
                    )
                found.append(self._checked(item.numbered(stream, self.versions.get(stream, 0) + 1)))
            elif isinstance(item, DomainEvent):
                found.append(self._checked(item))
            else:
                raise TypeError(
                    f"a scenario is given events, new_event(...) or aggregates, not {item!r}"
                )
        return found

    def _checked(self, event: DomainEvent) -> DomainEvent:
        last = self.versions.get(event.originator_id, 0)
        if event.originator_version <= last:
            raise ValueError(
                f"{type_name(type(event))} of stream {event.originator_id} is at version "
                f"{event.originator_version}, but that stream was given up to version {last} "
                "already: the store would refuse it as a concurrency conflict"
            )
        self.versions[event.originator_id] = event.originator_version
        return event

    def logged(self, events: Sequence[DomainEvent], mapper: PydanticMapper) -> list[Logged]:
        """``events`` as a follower reads them: encoded by eventkit's mapper, at the next
        positions of the log (one transaction id per event), and decoded again."""
        logged = []
        for event in events:
            stored = mapper.to_stored_event(event)
            self.last_id += 1
            notification = LoggedNotification(
                id=self.last_id,
                originator_id=stored.originator_id,
                originator_version=stored.originator_version,
                topic=stored.topic,
                state=stored.state,
                transaction_id=self.last_id,
                recorded_at=event.timestamp,
            )
            logged.append(Logged(notification, mapper.to_domain_event(notification)))
        return logged


@dataclass(frozen=True)
class Logged:
    """An event as the log holds it, and the event its notification decodes to."""

    notification: LoggedNotification
    event: Any


def reloaded(event: DomainEvent, mapper: PydanticMapper) -> DomainEvent:
    """``event`` after a trip through the store's encoding; an error naming the fields
    that change on the way (an event that does not come back equal would give another
    aggregate when loaded)."""
    back: DomainEvent = mapper.to_domain_event(mapper.to_stored_event(event))  # type: ignore[assignment]
    if back != event:
        changes = [
            f"{name}: {getattr(event, name)!r} comes back as {getattr(back, name)!r}"
            for name in type(event).model_fields
            if getattr(event, name) != getattr(back, name)
        ]
        raise AssertionError(
            f"{describe(event)} does not come back equal from the store: {'; '.join(changes)}"
        )
    return back


# -- expected events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """An expected event: its class and the fields a test states. Made by :func:`expect`."""

    cls: type[DomainEvent]
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{type_name(self.cls)}({values})"


def expect(cls: type[DomainEvent], /, **fields: Any) -> Expected:
    """An expected event of class ``cls`` (or a subclass) whose stated ``fields`` are
    equal; the fields not stated (the originator id and version and the timestamp among
    them) are not compared."""
    unknown = sorted(set(fields) - set(cls.model_fields))
    if unknown:
        raise TypeError(
            f"{type_name(cls)} has no field(s) {', '.join(unknown)}; its fields: "
            f"{', '.join(cls.model_fields)}"
        )
    return Expected(cls, dict(fields))


def expected(item: Expected | DomainEvent) -> Expected:
    """An expectation from an :class:`Expected`, or from an event: its class and the
    fields it was made with (``Order.Paid.model_construct(payment_id=...)`` states one)."""
    if isinstance(item, Expected):
        return item
    if isinstance(item, BaseModel):
        return Expected(type(item), {k: getattr(item, k) for k in item.model_fields_set})
    raise TypeError(f"expected events are expect(...) or events, not {item!r}")


def differences(wanted: Sequence[Expected], actual: Sequence[Any]) -> list[str]:
    """One line per way ``actual`` differs from ``wanted``, in order; empty when equal."""
    lines = []
    for i in range(max(len(wanted), len(actual))):
        number = f"#{i + 1}"
        if i >= len(actual):
            lines.append(f"{number}: expected {wanted[i]!r}, got no event")
            continue
        if i >= len(wanted):
            lines.append(f"{number}: got {describe(actual[i])}, expected no event")
            continue
        w, a = wanted[i], actual[i]
        if not isinstance(a, w.cls):
            lines.append(f"{number}: expected {w!r}, got {describe(a)}")
            continue
        for name, value in w.fields.items():
            got = getattr(a, name)
            if got != value:
                lines.append(
                    f"{number} {type_name(type(a))}.{name}: expected {value!r}, got {got!r}"
                )
    return lines


def describe(event: Any) -> str:
    """``Order.Paid(stream …, version 2, payment_id=…)``: an event in one line."""
    if not isinstance(event, BaseModel):
        return repr(event)
    where = []
    if hasattr(event, "originator_id"):
        where.append(f"stream {event.originator_id}")
    if hasattr(event, "originator_version"):
        where.append(f"version {event.originator_version}")
    values = [
        f"{name}={getattr(event, name)!r}"
        for name in type(event).model_fields
        if name not in ORIGINATOR_FIELDS
    ]
    return f"{type_name(type(event))}({', '.join([*where, *values])})"


def new_stream() -> UUID:
    """A fresh stream id."""
    return uuid4()

"""Given events, when a command, then events or an error: an aggregate's tests, no I/O.

```python
scenario = AggregateScenario(Order)
scenario.given(placed).when(lambda order: order.mark_paid(payment_id)).then(
    expect(Order.Paid, payment_id=payment_id)
)
scenario.given(placed, cancelled).when(lambda order: order.ship()).then_raises(
    IllegalTransitionError
)
AggregateScenario(Order).when(lambda: Order.place("ada", LINES, Currency.EUR)).then(
    expect(Order.Placed, customer_id="ada")
)
```

The given events reach the aggregate the way an application loads it: encoded and decoded by
eventkit's mapper, then applied in order. The command's new events are compared with the
expected ones by class and by the fields each expectation states; a mismatch fails with a
line per difference.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar
from uuid import UUID, uuid4

from eventkit.domain.model import Aggregate, DomainEvent
from eventkit.infrastructure.transcoding import MemoryKeysPydanticMapper
from eventkit.testing.events import (
    Expected,
    Given,
    Streams,
    describe,
    differences,
    expected,
    reloaded,
)

A = TypeVar("A", bound=Aggregate)
E = TypeVar("E", bound=BaseException)


class AggregateScenario(Generic[A]):
    """One aggregate of class ``kind``: its history (:meth:`given`), a command
    (:meth:`when`), and what the command must have done (:meth:`then`,
    :meth:`then_raises`)."""

    def __init__(self, kind: type[A], originator_id: UUID | None = None) -> None:
        """``originator_id`` is the stream that :func:`new_event` events without one go
        to (a fresh id by default)."""
        self.kind = kind
        self._streams = Streams(originator_id or uuid4())
        self._mapper = MemoryKeysPydanticMapper()
        self._history: list[DomainEvent] = []
        self._ran = False
        #: The aggregate after the command (None when the command created none).
        self.aggregate: A | None = None
        #: The command's new events, as they come back from the store.
        self.events: list[DomainEvent] = []
        #: What the command raised, if it raised.
        self.error: BaseException | None = None

    def given(self, *events: Given) -> Self:
        """The aggregate's history: events, :func:`new_event` events, or aggregates (their
        pending events). Several calls add up."""
        if self._ran:
            raise RuntimeError("given() after when(): state the whole history first")
        history = self._streams.events(events)
        streams = {e.originator_id for e in [*self._history, *history]}
        if len(streams) > 1:
            raise ValueError(
                f"an AggregateScenario is one aggregate's stream, but it was given events of "
                f"{len(streams)} streams: {', '.join(sorted(map(str, streams)))}"
            )
        self._history.extend(reloaded(e, self._mapper) for e in history)
        return self

    def loaded(self) -> A | None:
        """The aggregate its history gives (None for no history), as an application loads it."""
        aggregate: Any = None
        for event in self._history:
            aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
        if aggregate is not None and not isinstance(aggregate, self.kind):
            raise TypeError(
                f"the given events make a {type(aggregate).__qualname__}, not a "
                f"{self.kind.__qualname__}"
            )
        return aggregate

    def when(self, command: Callable[[A], object] | Callable[[], object]) -> Self:
        """Run ``command`` on the aggregate its history gives: a function of the aggregate
        (``lambda order: order.ship()``), or of nothing (``lambda: Order.place(...)``) for
        a command that creates one. A command that returns an aggregate of this kind
        made it (a creating command); its events are the new ones."""
        if self._ran:
            raise RuntimeError("when() twice: a scenario runs one command")
        self._ran = True
        aggregate = self.loaded()
        takes_aggregate = any(
            p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            for p in inspect.signature(command).parameters.values()
        )
        if takes_aggregate and aggregate is None:
            raise RuntimeError(
                f"when() passes the {self.kind.__qualname__} to the command, but no events "
                "were given to make one: give its history, or write a creating command as a "
                "function of nothing (lambda: ...)"
            )
        try:
            result = command(aggregate) if takes_aggregate else command()  # type: ignore[call-arg, arg-type]
        except Exception as e:
            self.error = e
            result = None
        if isinstance(result, self.kind):
            aggregate = result
        self.aggregate = aggregate
        if aggregate is not None:
            self.events = [
                reloaded(e, self._mapper)  # type: ignore[arg-type]
                for e in aggregate.collect_events()
            ]
        return self

    def then(self, *wanted: Expected | DomainEvent) -> Self:
        """Check that the command succeeded and emitted exactly ``wanted``, in order (none:
        it emitted nothing). Each is an :func:`expect` (its class and the fields it
        states) or an event (its class and the fields it was made with)."""
        self._require_ran("then")
        want = [expected(w) for w in wanted]
        if self.error is not None:
            raise AssertionError(
                f"{self._name()}: the command raised {type(self.error).__name__}: "
                f"{self.error}; expected {_listed(want) or 'no events'}"
            ) from self.error
        lines = differences(want, self.events)
        if lines:
            raise AssertionError(
                f"{self._name()}: the command's events differ from the expected ones:\n"
                + "\n".join(f"  {line}" for line in lines)
                + "\nexpected:\n"
                + (_numbered([repr(w) for w in want]) or "  no events")
                + "\nthe command emitted:\n"
                + (_numbered([describe(e) for e in self.events]) or "  no events")
            )
        return self

    def then_raises(self, error: type[E], match: str | None = None) -> E:
        """Check that the command raised ``error`` (whose message matches the regular
        expression ``match``, if given) and emitted nothing; return the error."""
        self._require_ran("then_raises")
        raised = self.error
        if raised is None:
            raise AssertionError(
                f"{self._name()}: expected the command to raise {error.__name__}, but it "
                f"succeeded and emitted {_listed([describe(e) for e in self.events]) or 'nothing'}"
            )
        if not isinstance(raised, error):
            raise AssertionError(
                f"{self._name()}: expected the command to raise {error.__name__}, but it "
                f"raised {type(raised).__name__}: {raised}"
            ) from raised
        if match is not None and not re.search(match, str(raised)):
            raise AssertionError(
                f"{self._name()}: {error.__name__} was raised, but its message {str(raised)!r} "
                f"does not match {match!r}"
            ) from raised
        if self.events:
            raise AssertionError(
                f"{self._name()}: the command raised {error.__name__} but left events pending: "
                f"{_listed([describe(e) for e in self.events])}; check before emitting"
            )
        return raised

    def _require_ran(self, method: str) -> None:
        if not self._ran:
            raise RuntimeError(f"{method}() before when(): run the command first")

    def _name(self) -> str:
        aggregate = self.aggregate
        where = f" {aggregate.id}" if aggregate is not None else ""
        return f"{self.kind.__qualname__}{where}"


def _numbered(lines: list[str]) -> str:
    return "\n".join(f"  #{i}: {line}" for i, line in enumerate(lines, 1))


def _listed(items: list[Any]) -> str:
    return ", ".join(str(i) for i in items)


__all__ = ["AggregateScenario"]

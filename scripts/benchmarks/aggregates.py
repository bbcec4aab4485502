"""The aggregates the append benchmark saves: one shape, once per system.

``Account`` is built on eventkit's ``domain.model.Aggregate`` (pydantic events, mapped by
eventkit's mapper); ``PlainAccount`` on eventsourcing's own ``Aggregate`` (dataclass events,
eventsourcing's default mapper). Both carry the same fields, so their stored payloads are
about the same size (~110 bytes of JSON).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eventsourcing.domain import Aggregate as PlainAggregate
from eventsourcing.domain import event

from eventkit.domain.model import Aggregate

_NAME = "benchmark account"
_TEXT = "a note of moderate length, like most event fields"


class Account(Aggregate, type_name="bench.Account"):
    """An eventkit aggregate: opened once, then noted any number of times."""

    class Opened(Aggregate.Created):
        name: str
        amount: int

    @event(Opened)
    def __init__(self, name: str, amount: int) -> None:
        self.total = amount

    class Noted(Aggregate.Event):
        text: str
        amount: int

    @event(Noted)
    def note(self, text: str, amount: int) -> None:
        self.total += amount


class PlainAccount(PlainAggregate):
    """The same aggregate on the plain eventsourcing library."""

    class Opened(PlainAggregate.Created):
        name: str
        amount: int

    @event(Opened)
    def __init__(self, name: str, amount: int) -> None:
        self.total = amount

    class Noted(PlainAggregate.Event):
        text: str
        amount: int

    @event(Noted)
    def note(self, text: str, amount: int) -> None:
        self.total += amount


def open_account(batch: int) -> Account:
    """A new eventkit ``Account`` with ``batch`` pending events (Opened, then Noted)."""
    account = Account(name=_NAME, amount=1)
    for i in range(1, batch):
        account.note(text=_TEXT, amount=i)
    return account


def open_plain_account(batch: int) -> PlainAccount:
    """A new ``PlainAccount`` with ``batch`` pending events (Opened, then Noted)."""
    account = PlainAccount(name=_NAME, amount=1)
    for i in range(1, batch):
        account.note(text=_TEXT, amount=i)
    return account


#: How each system builds an aggregate with N pending events.
OPENERS: dict[str, Callable[[int], Any]] = {
    "eventkit": open_account,
    "eventkit+notify": open_account,
    "eventkit+key": open_account,
    "eventkit+group": open_account,
    "eventsourcing": open_plain_account,
}

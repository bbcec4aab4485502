"""Metadata of events: what ties an event to the request, command or earlier event that
caused it.

Every event a save appends carries the metadata in force where the save runs::

    with eventkit.metadata(correlation_id=request_id, headers={"user": "ada", "tenant": "t1"}):
        shop.place_order(command)

- ``correlation_id``: one id shared by everything that follows from one request (the
  request's id, say): the events it appends, the events that reactions to those append,
  and so on down the chain;
- ``causation_id``: what directly caused these events: a request or message id given
  here, or, for the commands a reaction's handler runs, the id of the event it reacts to
  (its notification id, as text);
- ``headers``: anything else worth keeping with the events, as a JSON object (who,
  tenant, request id, trace context).

The recorder stores them in columns of their own (``correlation_id``, ``causation_id``,
``headers``); ``stored_events_json`` shows them, and followers' notifications carry them.
Contexts nest: an inner one keeps what it does not set of the outer one, and its headers
are merged over the outer ones. Nothing is set (and nothing is stored) outside a context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Metadata:
    """The correlation id, causation id and headers that events appended now carry."""

    correlation_id: str | None = None
    causation_id: str | None = None
    headers: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def is_empty(self) -> bool:
        return self.correlation_id is None and self.causation_id is None and not self.headers


_current: ContextVar[Metadata | None] = ContextVar("eventkit_metadata", default=None)


def current_metadata() -> Metadata | None:
    """The metadata in force here, or None outside every :func:`metadata` context."""
    return _current.get()


@contextlib.contextmanager
def metadata(
    correlation_id: str | None = None,
    causation_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> Iterator[Metadata]:
    """Give the events appended inside the block this correlation id, causation id and
    headers (merged over those of an enclosing block). Works across threads' and asyncio
    tasks' boundaries as context variables do: a thread started inside does not inherit it
    unless it runs in a copy of the context (``contextvars.copy_context().run``)."""
    for name, value in (("correlation_id", correlation_id), ("causation_id", causation_id)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"metadata: {name} must be a str, got {value!r}")
    if headers is not None and not all(isinstance(k, str) for k in headers):
        raise TypeError(f"metadata: header names must be str, got {list(headers)!r}")
    outer = _current.get() or Metadata()
    merged = Metadata(
        correlation_id=outer.correlation_id if correlation_id is None else correlation_id,
        causation_id=outer.causation_id if causation_id is None else causation_id,
        headers=MappingProxyType({**outer.headers, **(headers or {})}),
    )
    token = _current.set(merged)
    try:
        yield merged
    finally:
        _current.reset(token)

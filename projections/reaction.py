"""The reaction API: side effects, one handler per event type, run at least once.

```python
class ChargePayments(Reaction):
    name = "charge_payments"
    max_attempts = 5

    @handles
    def charge(self, event: Payment.Requested, context: ReactionContext) -> None:
        gateway.charge(event.originator_id, idempotency_key=context.idempotency_key)
```

A reaction's follower records one message per (event, reaction), in the transaction that
records its position; dramatiq actors execute the messages. The handler runs outside any
database transaction (a slow call to another service holds nothing that the log's
followers wait for). A message may be delivered more than once (a worker killed after the
side effect, before the acknowledgement), so:

- writes to eventkit's database go through :meth:`ReactionContext.execute`: they are queued
  while the handler runs and sent, once it has returned, in the transaction that records
  the message in the idempotency ledger, so they happen exactly once;
- calls to other services pass :attr:`ReactionContext.idempotency_key` on: every delivery
  of one message carries the same key;
- commands on aggregates check the aggregate's state first (a payment already captured is
  not captured again), as the shop's reactions do.

A handler that raises is tried again with exponential backoff and jitter, up to
``max_attempts`` tries, and then parked as a dead letter that ``eventkit dlq`` lists and
retries. Replays of projections never touch reactions.
"""

from __future__ import annotations

import contextlib
import functools
from abc import ABC
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from uuid import UUID

import psycopg
from psycopg import sql

from eventkit.domain.metadata import Metadata, metadata
from eventkit.infrastructure.log import LoggedNotification, StartFrom
from eventkit.projections.projection import Consumer, Context, UnhandledEventError


class ReactionContext(Context):
    """What a reaction's handler gets besides the event: :meth:`execute` (as in a
    projection), the message's id and idempotency key, and which try this is.

    Statements given to :meth:`execute` are queued and sent after the handler returns, in
    the transaction that records the message in the ledger. Reading a statement's result
    in the handler, or using :attr:`conn`, begins that transaction at once (it needs the
    statements run): the rest of the handler then runs inside it, so make calls to other
    services before that, or keep to writes whose results the handler does not read.
    """

    __slots__ = ("_begin", "attempt", "message_id", "reaction")

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        tables: dict[str, sql.Identifier],
        notification: LoggedNotification,
        *,
        reaction: str,
        message_id: UUID,
        attempt: int,
        begin: Callable[[], None] | None = None,
    ) -> None:
        """``begin`` begins the message's transaction (the executor's); without it the
        statements run at once on ``conn``, in whatever transaction it has open."""
        super().__init__(conn, tables, notification, deferred=begin is not None)
        self._begin = begin
        #: The reaction's name.
        self.reaction = reaction
        #: The message's id: the same on every delivery of the message.
        self.message_id = message_id
        #: Which try this is (1 for the first).
        self.attempt = attempt

    def flush(self, *, results: bool = True) -> None:
        """Begin the message's transaction (once), then send the queued statements."""
        if self._begin is not None:
            begin, self._begin = self._begin, None
            begin()
        super().flush(results=results)

    @property
    def idempotency_key(self) -> str:
        """The key to pass to other services: the same on every delivery of the message."""
        return str(self.message_id)


class Reaction(Consumer, ABC):
    """A side effect: a name, retry settings, and a handler per event type."""

    dispatch_method = "react"
    #: A reaction first deployed acts only on events after that moment: replaying the
    #: history into side effects is never a surprise (declare "origin" to act on it).
    start_from: ClassVar[StartFrom] = "head"
    #: Tries before the message is parked as a dead letter.
    max_attempts: ClassVar[int] = 5
    #: Backoff before the second try; each further one waits up to twice as long, with
    #: jitter, never more than ``max_backoff_ms``.
    min_backoff_ms: ClassVar[int] = 200
    max_backoff_ms: ClassVar[int] = 60_000
    #: A handler that runs longer than this is interrupted (at its next Python
    #: instruction: a call blocked in C, such as a socket read, when it returns) and the
    #: try counts as failed.
    time_limit_ms: ClassVar[int] = 60_000

    @classmethod
    def handler(cls, event_type: type[Any]) -> Callable[[Any, Any, Any], None]:
        """The handler of ``event_type``, run inside the metadata of what it reacts to
        (:func:`caused_by`): the events its commands append carry the event's correlation
        id, its id as their causation id, and its headers."""
        handler = super().handler(event_type)

        @functools.wraps(handler)
        def react(reaction: Any, event: Any, context: Any) -> None:
            notification = getattr(context, "notification", None)
            if notification is None:  # called outside a runtime, with no event's metadata
                handler(reaction, event, context)
                return
            tracing = getattr(reaction, _TRACING, None)
            if tracing is None:
                with caused_by(notification):
                    handler(reaction, event, context)
                return
            name = type(reaction).name
            attributes = {
                "eventkit.message_id": str(getattr(context, "message_id", "")),
                "eventkit.attempt": getattr(context, "attempt", 0),
            }
            with (
                tracing.consume(
                    f"eventkit.reaction {name}",
                    kind="reaction",
                    consumer=name,
                    notification=notification,
                    attributes=attributes,
                ),
                caused_by(notification),
            ):
                handler(reaction, event, context)

        return react


#: The attribute of a reaction instance holding its Tracing, when its runtime traces.
_TRACING = "_eventkit_tracing"


def trace_reactions(reactions: Sequence[Reaction]) -> None:
    """Run these reactions' handlers in OpenTelemetry spans (``EVENTKIT_TRACING=on``): a
    span per execution, child of the trace context stored with the event, inside which the
    handler's commands append (:mod:`eventkit.infrastructure.tracing`, imported here)."""
    from eventkit.infrastructure.tracing import tracing

    for reaction in reactions:
        setattr(reaction, _TRACING, tracing())


#: Headers an event's consequences do not inherit: a trace context names the span that
#: appended the event; the consequences' own appends store theirs.
_NOT_CARRIED = frozenset({"traceparent", "tracestate"})


def caused_by(notification: LoggedNotification) -> contextlib.AbstractContextManager[Metadata]:
    """The metadata context of what ``notification``'s event causes: its correlation id
    (its notification id, as text, when it has none: it starts the chain), its notification
    id as the causation id, and its headers less any trace context."""
    cause = str(notification.id)
    headers = notification.headers or {}
    return metadata(
        correlation_id=notification.correlation_id or cause,
        causation_id=cause,
        headers={k: v for k, v in headers.items() if k not in _NOT_CARRIED},
    )


__all__ = ["Reaction", "ReactionContext", "UnhandledEventError", "caused_by", "trace_reactions"]

"""The reaction API: side effects, one handler per event type, run at least once.

```python
class ChargePayments(Reaction):
    name = "charge_payments"
    max_attempts = 5

    @singledispatchmethod
    def react(self, event: object, context: ReactionContext) -> None:
        raise UnhandledEventError(self, event)

    @react.register
    def _(self, event: Payment.Requested, context: ReactionContext) -> None:
        gateway.charge(event.originator_id, idempotency_key=context.message_id)
```

A reaction's follower records one message per (event, reaction), in the transaction that
records its position; dramatiq actors execute the messages. A message may be delivered
more than once (a worker killed after the side effect, before the acknowledgement), so:

- writes to eventkit's database go through :meth:`ReactionContext.execute`: they commit in
  the transaction that records the message in the idempotency ledger, so they happen
  exactly once;
- calls to other services pass :attr:`ReactionContext.message_id` on as their idempotency
  key: every delivery of one message carries the same id;
- commands on aggregates check the aggregate's state first (a payment already captured is
  not captured again), as the shop's reactions do.

A handler that raises is tried again with exponential backoff and jitter, up to
``max_attempts`` tries, and then parked as a dead letter that ``eventkit dlq`` lists and
retries. Replays of projections never touch reactions.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import singledispatchmethod
from typing import Any, ClassVar, LiteralString
from uuid import UUID

import psycopg
from psycopg import sql

from eventkit.infrastructure.log import LoggedNotification
from eventkit.projections.projection import Handlers, Table, UnhandledEventError


@dataclass
class ReactionContext:
    """What a reaction's handler gets besides the event."""

    #: The reaction's name.
    reaction: str
    #: The message's id: the same on every delivery, the key to pass to other services.
    message_id: UUID
    #: The event's position and recorded time.
    notification: LoggedNotification
    #: Which try this is (1 for the first).
    attempt: int
    #: The ledger's transaction: what a handler writes here commits with the ledger record.
    conn: psycopg.Connection[Any]
    tables: dict[str, sql.Identifier] = field(default_factory=dict)

    def execute(self, query: LiteralString, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        """Run ``query`` in the ledger's transaction, ``{table}`` placeholders filled with
        the reaction's tables."""
        return self.conn.execute(sql.SQL(query).format(**self.tables), params)


class Reaction(Handlers, ABC):
    """A side effect: a name, retry settings, and a handler per event type."""

    dispatch_method = "react"
    #: Tries before the message is parked as a dead letter.
    max_attempts: ClassVar[int] = 5
    #: Backoff before the second try; each further one waits up to twice as long, with
    #: jitter, never more than ``max_backoff_ms``.
    min_backoff_ms: ClassVar[int] = 200
    max_backoff_ms: ClassVar[int] = 60_000
    #: A try that runs longer than this is interrupted and counts as failed.
    time_limit_ms: ClassVar[int] = 60_000
    #: Tables the reaction writes in the ledger's transaction (created on start).
    tables: ClassVar[tuple[Table, ...]] = ()

    @singledispatchmethod
    def react(self, event: object, context: ReactionContext) -> None:
        raise UnhandledEventError(self, event)


__all__ = ["Reaction", "ReactionContext", "UnhandledEventError"]

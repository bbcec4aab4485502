"""Given events, then the side effects a reaction asked for, through the idempotency ledger.

```python
def test_a_shipped_order_gets_one_mail(eventkit_transaction):
    mails = ReactionScenario(OrderMails(), eventkit_transaction)
    mails.given(shipped)
    mails.redeliver()                     # the same message again: the ledger skips it
    assert [d.outcome for d in mails.deliveries] == ["executed", "duplicate"]
    assert len(mails.rows("order_mails")) == 1
```

Each given event the reaction handles is one message, run as the reaction's actor runs it
(:mod:`eventkit.projections.executor`): a message the ledger holds already is skipped;
otherwise the handler gets a real :class:`~eventkit.projections.reaction.ReactionContext`
(``message_id``, ``idempotency_key``, ``attempt``), its ``context.execute`` statements are
queued and sent after it returns (a result read sends them at once), with the ledger
record, in a transaction of the message's own (here a savepoint of the test's). A handler
that raises rolls its message back (ledger row and writes), and the failure is recorded,
not raised: a redelivery is the next try.
External services are observed through fakes passed to the reaction's constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Self
from uuid import UUID

import psycopg
from psycopg import pq, sql

from eventkit.infrastructure.broker import message_id
from eventkit.projections.executor import HandlerSwallowedError
from eventkit.projections.reaction import Reaction, ReactionContext
from eventkit.testing.consumers import ConsumerScenario
from eventkit.testing.database import Transaction
from eventkit.testing.events import Given, Logged, describe

Outcome = Literal["executed", "duplicate", "failed"]


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message to the reaction, and how it went."""

    message_id: UUID
    event: Any
    attempt: int
    outcome: Outcome
    #: What the handler raised (``outcome == "failed"``).
    error: BaseException | None = None
    #: The try was the reaction's last (``max_attempts``): the message would be parked.
    parked: bool = False


class ReactionScenario(ConsumerScenario):
    """A reaction whose tables and ledger live in the test's transaction."""

    kind = "reaction"

    def __init__(self, reaction: Reaction, transaction: Transaction) -> None:
        super().__init__(reaction, transaction)
        self.reaction = reaction
        #: Every delivery, in order.
        self.deliveries: list[Delivery] = []
        self._messages: dict[UUID, Logged] = {}
        self._handlers: dict[type[Any], Callable[[Any, Any, Any], None]] = {}
        # The ledger row the actor's first statement writes (see ReactionExecutor).
        self._claim = sql.SQL(
            "INSERT INTO {} (message_id, reaction, notification_id, attempt)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (message_id) DO NOTHING RETURNING 1"
        ).format(sql.Identifier(self.schema, "reaction_ledger"))

    def given(self, *events: Given) -> Self:
        """Deliver the message of each of ``events`` (events, :func:`new_event` events,
        or aggregates whose pending events are taken) that the reaction handles, once."""
        for item in self._log(events):
            n = item.notification
            mid = message_id(self.name, _uuid(n.originator_id), n.originator_version)
            self._messages[mid] = item
            self._deliver(mid)
        return self

    def redeliver(self, *message_ids: UUID) -> Self:
        """Deliver messages again (all given so far when none are named), as a broker does
        after a lost acknowledgement or for a retry: an executed one is skipped, a failed
        one is tried again."""
        for mid in message_ids or tuple(self._messages):
            if mid not in self._messages:
                raise KeyError(f"reaction {self.name!r} was given no message {mid}")
            self._deliver(mid)
        return self

    def message_id(self, event: Any) -> UUID:
        """The id of the reaction's message for ``event`` (the same on every delivery)."""
        return message_id(self.name, event.originator_id, event.originator_version)

    @property
    def errors(self) -> dict[UUID, list[BaseException]]:
        """What the handler raised, per message, one error per failed try."""
        found: dict[UUID, list[BaseException]] = {}
        for d in self.deliveries:
            if d.error is not None:
                found.setdefault(d.message_id, []).append(d.error)
        return found

    def ledger(self) -> list[UUID]:
        """The message ids the idempotency ledger holds for this reaction, in the order
        they were executed."""
        rows = self.query(
            "SELECT message_id FROM {ledger} WHERE reaction = %s ORDER BY executed_at, message_id",
            (self.name,),
        )
        return [r[0] for r in rows]

    def _placeholders(self) -> dict[str, sql.Identifier]:
        return {"ledger": sql.Identifier(self.schema, "reaction_ledger"), **self.tables}

    def _deliver(self, mid: UUID) -> None:
        item = self._messages[mid]
        attempt = 1 + sum(1 for d in self.deliveries if d.message_id == mid)
        try:
            with self.conn.transaction():
                claimed = self.conn.execute(
                    self._claim, (mid, self.name, item.notification.id, attempt)
                ).fetchone()
                if claimed is None:
                    self.deliveries.append(Delivery(mid, item.event, attempt, "duplicate"))
                    return
                self._run(mid, item, attempt)
        except psycopg.OperationalError:
            raise
        except Exception as error:
            last = attempt >= type(self.reaction).max_attempts
            self.deliveries.append(Delivery(mid, item.event, attempt, "failed", error, last))
            return
        self.deliveries.append(Delivery(mid, item.event, attempt, "executed"))

    def _run(self, mid: UUID, item: Logged, attempt: int) -> None:
        context = ReactionContext(
            self.conn,
            self.tables,
            item.notification,
            reaction=self.name,
            message_id=mid,
            attempt=attempt,
            begin=_begun,
        )
        handler = self._handlers.get(type(item.event))
        if handler is None:
            handler = self._handlers[type(item.event)] = type(self.reaction).handler(
                type(item.event)
            )
        handler(self.reaction, item.event, context)
        if self.conn.pgconn.transaction_status == pq.TransactionStatus.INERROR:
            raise HandlerSwallowedError(
                f"reaction {self.name!r}: a database statement of the handler failed on "
                f"{describe(item.event)} and the handler returned normally; nothing of the "
                "message was committed"
            )
        context.flush(results=False)


def _begun() -> None:
    """The message's transaction is begun already: the savepoint that holds its claim."""


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))

"""eventkit.testing.ReactionScenario: given events, then the effects, through the ledger."""

from __future__ import annotations

import contextlib
from typing import ClassVar
from uuid import uuid4

import psycopg

from eventkit.domain.shop.orders import Order
from eventkit.infrastructure.broker import message_id
from eventkit.infrastructure.settings import Settings
from eventkit.projections.executor import HandlerSwallowedError
from eventkit.projections.projection import Table, handles
from eventkit.projections.reaction import Reaction, ReactionContext
from eventkit.testing import ReactionScenario, Transaction, new_event


class Receipts(Reaction):
    """Writes a receipt per shipped order; fails while ``down`` is set."""

    name = "receipts"
    max_attempts = 2
    tables = (
        Table(
            "receipts",
            "CREATE TABLE {table} (message_id uuid PRIMARY KEY, order_id uuid, attempt int,"
            " idempotency_key text)",
        ),
    )
    down: ClassVar[bool] = False

    def __init__(self) -> None:
        self.runs = 0

    @handles
    def shipped(self, event: Order.Shipped, context: ReactionContext) -> None:
        self.runs += 1
        context.execute(
            "INSERT INTO {receipts} (message_id, order_id, attempt, idempotency_key)"
            " VALUES (%s, %s, %s, %s)",
            (context.message_id, event.originator_id, context.attempt, context.idempotency_key),
        )
        if self.down:
            raise ConnectionRefusedError("the printer is down")


class Swallower(Reaction):
    """Catches the error of a statement that failed and returns (it reads the statement's
    result, which sends it at once; a queued statement fails after the handler returned,
    where no handler code can catch it)."""

    name = "swallower"

    @handles
    def shipped(self, event: Order.Shipped, context: ReactionContext) -> None:
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            context.execute("SELECT 1 / 0").fetchone()


def test_each_event_is_one_message_run_through_the_ledger(
    eventkit_transaction: Transaction,
) -> None:
    order_id = uuid4()
    reaction = Receipts()
    receipts = ReactionScenario(reaction, eventkit_transaction)

    receipts.given(
        new_event(Order.Shipped, order_id), new_event(Order.Cancelled, order_id, reason="x")
    )

    expected_id = message_id("receipts", order_id, 1)
    assert [(d.message_id, d.outcome, d.attempt) for d in receipts.deliveries] == [
        (expected_id, "executed", 1)
    ]
    assert receipts.rows("receipts") == [
        {
            "message_id": expected_id,
            "order_id": order_id,
            "attempt": 1,
            "idempotency_key": str(expected_id),
        }
    ]
    assert receipts.ledger() == [expected_id]
    assert [type(e).__name__ for e in receipts.skipped] == ["Cancelled"]


def test_a_message_delivered_twice_runs_once(eventkit_transaction: Transaction) -> None:
    reaction = Receipts()
    receipts = ReactionScenario(reaction, eventkit_transaction)
    shipped = new_event(Order.Shipped, uuid4())

    receipts.given(shipped).redeliver()

    assert [d.outcome for d in receipts.deliveries] == ["executed", "duplicate"]
    assert reaction.runs == 1
    assert len(receipts.rows("receipts")) == 1


def test_a_failed_try_leaves_nothing_and_the_next_one_runs(
    eventkit_transaction: Transaction,
) -> None:
    reaction = Receipts()
    receipts = ReactionScenario(reaction, eventkit_transaction)
    Receipts.down = True
    try:
        receipts.given(new_event(Order.Shipped, uuid4()))
    finally:
        Receipts.down = False
    [failed] = receipts.deliveries
    assert (failed.outcome, failed.attempt, failed.parked) == ("failed", 1, False)
    assert [str(e) for e in receipts.errors[failed.message_id]] == ["the printer is down"]
    assert receipts.rows("receipts") == []
    assert receipts.ledger() == []

    receipts.redeliver(failed.message_id)

    assert [d.outcome for d in receipts.deliveries] == ["failed", "executed"]
    assert receipts.rows("receipts", columns=["attempt"]) == [{"attempt": 2}]
    assert receipts.ledger() == [failed.message_id]


def test_the_last_try_is_marked_parked(eventkit_transaction: Transaction) -> None:
    receipts = ReactionScenario(Receipts(), eventkit_transaction)
    Receipts.down = True
    try:
        receipts.given(new_event(Order.Shipped, uuid4())).redeliver()
    finally:
        Receipts.down = False

    assert [(d.attempt, d.parked) for d in receipts.deliveries] == [(1, False), (2, True)]


def test_a_swallowed_statement_error_fails_the_message(eventkit_transaction: Transaction) -> None:
    scenario = ReactionScenario(Swallower(), eventkit_transaction)

    scenario.given(new_event(Order.Shipped, uuid4()))

    [delivery] = scenario.deliveries
    assert delivery.outcome == "failed"
    assert isinstance(delivery.error, HandlerSwallowedError)
    assert "a database statement of the handler failed on Order.Shipped" in str(delivery.error)
    assert scenario.ledger() == []


def test_nothing_is_left_afterwards(database_url: str) -> None:
    with Transaction.open(Settings(database_url=database_url)) as transaction:
        scenario = ReactionScenario(Receipts(), transaction)
        scenario.given(new_event(Order.Shipped, uuid4()))
        assert len(scenario.ledger()) == 1

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (transaction.schema,)
        ).fetchone()
    assert row == (0,)

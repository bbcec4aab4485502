"""LoanReceipts, with eventkit's harness: a receipt per loan, through the ledger."""

from __future__ import annotations

from datetime import date
from uuid import uuid4

from eventkit.testing import ReactionScenario, Transaction, new_event

from domain.books import Book
from service.receipts import LoanReceipts, UnknownBranchError


def lent(branch: str) -> object:
    return new_event(Book.Lent, uuid4(), member_id=uuid4(), branch=branch, due=date(2026, 3, 15))


def test_one_receipt_per_loan_however_often_it_is_delivered(
    eventkit_transaction: Transaction,
) -> None:
    receipts = ReactionScenario(LoanReceipts(frozenset({"main"})), eventkit_transaction)

    receipts.given(lent("main")).redeliver()

    assert [d.outcome for d in receipts.deliveries] == ["executed", "duplicate"]
    assert receipts.rows("loan_receipts", columns=["message_id", "branch"]) == [
        {"message_id": receipts.deliveries[0].message_id, "branch": "main"}
    ]


def test_a_loan_at_a_branch_without_a_printer_fails_until_it_has_one(
    eventkit_transaction: Transaction,
) -> None:
    reaction = LoanReceipts(frozenset({"main"}))
    receipts = ReactionScenario(reaction, eventkit_transaction)

    receipts.given(lent("annex"))
    [failed] = receipts.deliveries
    assert isinstance(failed.error, UnknownBranchError)
    assert receipts.rows("loan_receipts") == []

    reaction.branches = frozenset({"main", "annex"})
    receipts.redeliver()
    assert receipts.ledger() == [failed.message_id]
    assert len(receipts.rows("loan_receipts")) == 1

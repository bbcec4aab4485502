"""The Loans view, with eventkit's harness: given events, then rows, in a rolled-back
transaction of the test database (the eventkit_transaction fixture)."""

from __future__ import annotations

from datetime import date
from uuid import uuid4

import pytest
from eventkit.testing import HandlerFailedError, ProjectionScenario, Transaction, new_event

from domain.books import Book
from service.loans import LoanQueries, Loans


def test_a_lent_book_is_on_loan_until_it_comes_back(eventkit_transaction: Transaction) -> None:
    dune, ada = Book.create_id("978-0"), uuid4()
    view = ProjectionScenario(Loans(), eventkit_transaction)
    loans = view.queries(LoanQueries)

    view.given(
        new_event(Book.Added, dune, isbn="978-0", title="Dune"),
        new_event(Book.Lent, dune, member_id=ada, branch="main", due=date(2026, 3, 15)),
    )
    assert [(loan.title, loan.member_id) for loan in loans.on_loan()] == [("Dune", ada)]

    view.given(new_event(Book.Returned, dune, member_id=ada))
    assert (loans.on_loan(), loans.available()) == ([], ["978-0"])


def test_a_loan_of_a_book_the_view_lacks_fails_naming_it(
    eventkit_transaction: Transaction,
) -> None:
    stray = uuid4()
    view = ProjectionScenario(Loans(), eventkit_transaction)

    with pytest.raises(HandlerFailedError, match=f"library.Book.Lent\\(stream {stray}, version 1"):
        view.given(new_event(Book.Lent, stray, member_id=uuid4(), branch="main", due=date.today()))

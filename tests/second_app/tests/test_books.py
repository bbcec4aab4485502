"""Book and Member: given their history, when a command, then events or an error."""

from __future__ import annotations

from datetime import UTC, date, datetime
from uuid import uuid4

from eventkit.testing import AggregateScenario, expect, new_event
from freezegun import freeze_time

from domain.books import Book
from domain.errors import BookNotAvailableError, LoanLimitError, NotBorrowedError
from domain.members import Member

ADA = uuid4()
ADDED = new_event(Book.Added, isbn="978-0", title="Dune")


def test_adding_a_book_names_its_stream_after_the_isbn() -> None:
    with freeze_time("2026-03-01 10:00:00"):
        AggregateScenario(Book).when(lambda: Book(isbn="978-0", title="Dune")).then(
            expect(
                Book.Added,
                originator_id=Book.create_id("978-0"),
                title="Dune",
                timestamp=datetime(2026, 3, 1, 10, tzinfo=UTC),
            )
        )


def test_a_book_on_the_shelf_is_lent() -> None:
    scenario = (
        AggregateScenario(Book)
        .given(ADDED)
        .when(lambda book: book.lend(ADA, "main", date(2026, 3, 15)))
        .then(expect(Book.Lent, member_id=ADA, branch="main", due=date(2026, 3, 15)))
    )
    assert scenario.aggregate is not None
    assert scenario.aggregate.borrower == ADA


def test_a_lent_book_is_not_lent_again() -> None:
    AggregateScenario(Book).given(
        ADDED, new_event(Book.Lent, member_id=ADA, branch="main", due=date(2026, 3, 15))
    ).when(lambda book: book.lend(uuid4(), "main", date(2026, 4, 1))).then_raises(
        BookNotAvailableError, match=f"lent to member {ADA} already"
    )


def test_only_the_borrower_gives_a_book_back() -> None:
    AggregateScenario(Book).given(ADDED).when(lambda book: book.give_back(ADA)).then_raises(
        NotBorrowedError
    )


def test_a_member_borrows_up_to_the_limit() -> None:
    joined = new_event(Member.Joined, name="Ada")
    borrowed = [new_event(Member.Borrowed, book_id=uuid4()) for _ in range(Member.LIMIT)]

    AggregateScenario(Member).given(joined, *borrowed).when(
        lambda member: member.borrow(uuid4())
    ).then_raises(LoanLimitError)

"""The Library application service, on eventsourcing's in-memory recorder with eventkit's
mapper (the eventkit_memory_env fixture of eventkit's pytest plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest

from domain.errors import BookNotAvailableError, DuplicateBookError
from domain.library import Library


@pytest.fixture
def library(eventkit_memory_env: dict[str, str]) -> Iterator[Library]:
    library = Library(env=eventkit_memory_env)
    yield library
    library.close()


def test_a_loan_changes_the_book_and_the_member_together(library: Library) -> None:
    library.add_book("978-0", "Dune")
    ada = library.join("Ada")

    outcome = library.lend("978-0", ada, "main", date(2026, 3, 15))

    book, member = outcome.aggregates
    assert (book.borrower, member.loans) == (ada, [book.id])
    with pytest.raises(BookNotAvailableError):
        library.lend("978-0", library.join("Bo"), "main", date(2026, 3, 15))


def test_a_book_is_added_once(library: Library) -> None:
    library.add_book("978-0", "Dune")
    with pytest.raises(DuplicateBookError):
        library.add_book("978-0", "Dune")

"""A book of the library: added once, then lent and given back, one loan at a time."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID, uuid5

from eventkit import Aggregate, event

from domain.errors import BookNotAvailableError, NotBorrowedError

#: A book's id is uuid5(BOOKS, isbn): one stream per isbn, found by its isbn.
BOOKS = UUID("5b0c6f8e-2f4a-4c1b-9d7e-3a6b8c0d1e2f")


class Book(Aggregate, type_name="library.Book"):
    """One book, by isbn. Its events are stored as library.Book.Added, ...Lent, ...Returned."""

    @staticmethod
    def create_id(isbn: str, **_: Any) -> UUID:
        return uuid5(BOOKS, isbn)

    class Added(Aggregate.Created):
        isbn: str
        title: str

    class Lent(Aggregate.Event):
        member_id: UUID
        branch: str
        due: date

    class Returned(Aggregate.Event):
        member_id: UUID

    @event(Added)
    def __init__(self, isbn: str, title: str) -> None:
        self.isbn = isbn
        self.title = title
        self.borrower: UUID | None = None

    def lend(self, member_id: UUID, branch: str, due: date) -> None:
        """Lend the book to a member, from a branch, until ``due``."""
        if self.borrower is not None:
            raise BookNotAvailableError(self.isbn, self.borrower)
        self._lent(member_id=member_id, branch=branch, due=due)

    def give_back(self, member_id: UUID) -> None:
        """The member brought the book back."""
        if self.borrower != member_id:
            raise NotBorrowedError(self.isbn, member_id)
        self._returned(member_id=member_id)

    @event(Lent)
    def _lent(self, member_id: UUID, branch: str, due: date) -> None:
        self.borrower = member_id

    @event(Returned)
    def _returned(self, member_id: UUID) -> None:
        self.borrower = None

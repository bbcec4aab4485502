"""A member of the library, who may have a few books on loan at once."""

from __future__ import annotations

from uuid import UUID

from eventkit import Aggregate, event

from domain.errors import LoanLimitError


class Member(Aggregate, type_name="library.Member"):
    """A member and the books they have on loan."""

    #: Books a member may have on loan at once.
    LIMIT = 3

    class Joined(Aggregate.Created):
        name: str

    class Borrowed(Aggregate.Event):
        book_id: UUID

    class BroughtBack(Aggregate.Event):
        book_id: UUID

    @event(Joined)
    def __init__(self, name: str) -> None:
        self.name = name
        self.loans: list[UUID] = []

    def borrow(self, book_id: UUID) -> None:
        if len(self.loans) >= self.LIMIT:
            raise LoanLimitError(self.id, self.LIMIT)
        self._borrowed(book_id=book_id)

    def bring_back(self, book_id: UUID) -> None:
        self._brought_back(book_id=book_id)

    @event(Borrowed)
    def _borrowed(self, book_id: UUID) -> None:
        self.loans.append(book_id)

    @event(BroughtBack)
    def _brought_back(self, book_id: UUID) -> None:
        self.loans.remove(book_id)

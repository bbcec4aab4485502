"""The Library application service: each command loads what it touches, decides, and saves
every new event in one transaction, again on fresh aggregates after a conflict."""

from __future__ import annotations

from datetime import date
from uuid import UUID

from eventkit import Application, Outcome

from domain.books import Book
from domain.errors import DuplicateBookError, UnknownBookError, UnknownMemberError
from domain.members import Member

#: What a loan or a return changes: the book and the member, saved together.
BookAndMember = tuple[Book, Member]


class Library(Application):
    def add_book(self, isbn: str, title: str) -> Outcome[tuple[Book]]:
        def decide() -> tuple[Book]:
            if self.find(Book.create_id(isbn), Book) is not None:
                raise DuplicateBookError(isbn)
            return (Book(isbn=isbn, title=title),)

        return self.run(decide, f"add book {isbn}")

    def join(self, name: str) -> UUID:
        member = Member(name=name)
        self.save(member)
        return member.id

    def lend(self, isbn: str, member_id: UUID, branch: str, due: date) -> Outcome[BookAndMember]:
        def decide() -> BookAndMember:
            book, member = self._book(isbn), self._member(member_id)
            book.lend(member.id, branch, due)
            member.borrow(book.id)
            return book, member

        return self.run(decide, f"lend {isbn} to {member_id}")

    def give_back(self, isbn: str, member_id: UUID) -> Outcome[BookAndMember]:
        def decide() -> BookAndMember:
            book, member = self._book(isbn), self._member(member_id)
            book.give_back(member.id)
            member.bring_back(book.id)
            return book, member

        return self.run(decide, f"give back {isbn} from {member_id}")

    def _book(self, isbn: str) -> Book:
        book = self.find(Book.create_id(isbn), Book)
        if book is None:
            raise UnknownBookError(isbn)
        return book

    def _member(self, member_id: UUID) -> Member:
        member = self.find(member_id, Member)
        if member is None:
            raise UnknownMemberError(member_id)
        return member

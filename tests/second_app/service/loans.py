"""Loans: one row per book, with who has it and until when; and its query class."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from uuid import UUID

from eventkit import Context, Projection, Queries, Table, handles

from domain.books import Book


class Loans(Projection):
    name = "loans"
    tables = (
        Table(
            "loans",
            "CREATE TABLE {table} (book_id uuid PRIMARY KEY, isbn text NOT NULL,"
            " title text NOT NULL, member_id uuid, due date, version bigint NOT NULL);"
            "CREATE INDEX ON {table} (member_id)",
        ),
    )

    @handles
    def added(self, event: Book.Added, context: Context) -> None:
        context.execute(
            "INSERT INTO {loans} (book_id, isbn, title, version) VALUES (%s, %s, %s, %s)",
            (event.originator_id, event.isbn, event.title, event.originator_version),
        )

    @handles
    def lent(self, event: Book.Lent, context: Context) -> None:
        self._set(context, event, event.member_id, event.due)

    @handles
    def returned(self, event: Book.Returned, context: Context) -> None:
        self._set(context, event, None, None)

    @staticmethod
    def _set(context: Context, event: Book.Event, member: UUID | None, due: date | None) -> None:
        version = event.originator_version
        context.execute(
            "UPDATE {loans} SET member_id = %s, due = %s, version = %s"
            " WHERE book_id = %s AND version = %s",
            (member, due, version, event.originator_id, version - 1),
            # The book's previous event must be in the view: checked when the batch is sent.
            expect_rows=1,
        )


@dataclass(frozen=True)
class Loan:
    isbn: str
    title: str
    member_id: UUID
    due: date


class LoanQueries(Queries):
    """Who has which book."""

    projection = Loans

    def on_loan(self, *, wait_for: int | None = None) -> list[Loan]:
        rows = self.fetch(
            "SELECT isbn, title, member_id, due FROM {loans} WHERE member_id IS NOT NULL"
            " ORDER BY isbn",
            wait_for=wait_for,
        )
        return [Loan(*row) for row in rows]

    def available(self) -> list[str]:
        rows = self.fetch("SELECT isbn FROM {loans} WHERE member_id IS NULL ORDER BY isbn")
        return [row[0] for row in rows]

"""LoanReceipts: a receipt printed at the lending branch for each loan, exactly once."""

from __future__ import annotations

from eventkit import Reaction, ReactionContext, Runtime, Table, handles

from domain.books import Book


class UnknownBranchError(Exception):
    """A loan from a branch that has no receipt printer."""


class LoanReceipts(Reaction):
    name = "loan_receipts"
    # A reaction starts at the head of the log: loans made before it was first deployed get
    # no receipt. Three tries, then the message is parked as a dead letter.
    max_attempts = 3
    min_backoff_ms = 100
    max_backoff_ms = 1_000
    tables = (
        Table(
            "loan_receipts",
            "CREATE TABLE {table} (message_id uuid PRIMARY KEY, book_id uuid NOT NULL,"
            " member_id uuid NOT NULL, branch text NOT NULL)",
        ),
    )

    def __init__(self, branches: frozenset[str]) -> None:
        self.branches = branches

    @classmethod
    def construct(cls, runtime: Runtime) -> LoanReceipts:
        setting = runtime.setting("LIBRARY_BRANCHES", "main") or "main"
        return cls(frozenset(b.strip() for b in setting.split(",")))

    @handles
    def lent(self, event: Book.Lent, context: ReactionContext) -> None:
        if event.branch not in self.branches:
            raise UnknownBranchError(
                f"no receipt printer at branch {event.branch!r} (book {event.originator_id}); "
                f"branches with one: {', '.join(sorted(self.branches))} (LIBRARY_BRANCHES)"
            )
        # Written in the ledger's transaction: once per message, whatever the redeliveries.
        context.execute(
            "INSERT INTO {loan_receipts} (message_id, book_id, member_id, branch)"
            " VALUES (%s, %s, %s, %s)",
            (context.message_id, event.originator_id, event.member_id, event.branch),
        )

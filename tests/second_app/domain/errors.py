"""What the library refuses, one error per condition."""

from __future__ import annotations

from uuid import UUID


class LibraryError(Exception):
    """A command the library refuses; nothing was recorded."""


class BookNotAvailableError(LibraryError):
    def __init__(self, isbn: str, borrower: UUID) -> None:
        super().__init__(f"book {isbn} is lent to member {borrower} already")


class NotBorrowedError(LibraryError):
    def __init__(self, isbn: str, member_id: UUID) -> None:
        super().__init__(f"book {isbn} is not lent to member {member_id}")


class LoanLimitError(LibraryError):
    def __init__(self, member_id: UUID, limit: int) -> None:
        super().__init__(f"member {member_id} has {limit} books on loan, the most allowed")


class UnknownBookError(LibraryError):
    def __init__(self, isbn: str) -> None:
        super().__init__(f"no book {isbn} in the library")


class UnknownMemberError(LibraryError):
    def __init__(self, member_id: UUID) -> None:
        super().__init__(f"no member {member_id}")


class DuplicateBookError(LibraryError):
    def __init__(self, isbn: str) -> None:
        super().__init__(f"book {isbn} is in the library already")

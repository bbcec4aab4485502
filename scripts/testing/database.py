"""The test database: a transaction that is rolled back after the test, and fresh schemas.

A projection's or reaction's scenario runs in a :class:`Transaction`: the view's tables are
created inside it and everything is rolled back when it ends, so tests leave nothing behind
and need no fresh schema each. Tests that run real workers or a real ``Application`` get a
schema of their own instead (:func:`fresh_schema`), dropped afterwards.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import psycopg
from psycopg import sql

from eventkit.infrastructure.database import resolve_database_url
from eventkit.infrastructure.migrations import migrate
from eventkit.infrastructure.settings import Settings

_lock = threading.Lock()
#: (url, schema) pairs this process has migrated: a transaction on them needs no migration.
_migrated: set[tuple[str, str]] = set()


def migrated(url: str, schema: str) -> None:
    """Create or upgrade ``schema`` (once per process), on a connection of its own: a
    migration holds a lock that a long test transaction must not keep."""
    with _lock:
        if (url, schema) in _migrated:
            return
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, schema)
        _migrated.add((url, schema))


@dataclass(frozen=True)
class Transaction:
    """A connection inside a transaction on the test database, rolled back when it ends.

    ``schema`` is migrated (eventkit's tables, the reactions' ledger among them); the
    scenarios create their views' tables in it, inside the transaction. Nothing commits:
    psycopg refuses ``commit()`` inside it, and blocks of ``conn.transaction()`` are
    savepoints.
    """

    conn: psycopg.Connection[Any]
    schema: str

    @classmethod
    @contextmanager
    def open(cls, settings: Settings | None = None) -> Iterator[Transaction]:
        """A transaction on the settings' database (``DATABASE_URL``, else the embedded
        server) in the settings' schema (``EVENTKIT_SCHEMA``), migrated first."""
        settings = settings or Settings.from_env()
        url = resolve_database_url(settings)
        migrated(url, settings.schema)
        with cls.connect(url, settings.schema) as transaction:
            yield transaction

    @classmethod
    @contextmanager
    def connect(cls, url: str, schema: str) -> Iterator[Transaction]:
        """A transaction on ``url`` in ``schema``, which must be migrated already."""
        with (
            psycopg.connect(url, autocommit=True, application_name="eventkit:test") as conn,
            # force_rollback: the block ends in a rollback even when it ends normally.
            conn.transaction(force_rollback=True),
        ):
            yield cls(conn, schema)


@contextmanager
def fresh_schema(settings: Settings | None = None, prefix: str = "test") -> Iterator[Settings]:
    """A migrated schema of its own on the settings' database, dropped afterwards: the
    settings to reach it (for workers, applications and query classes)."""
    base = settings or Settings.from_env()
    url = resolve_database_url(base)
    schema = f"{prefix}_{uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, schema)
    try:
        yield dataclasses.replace(base, database_url=url, schema=schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

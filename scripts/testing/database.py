"""The test database: a transaction that is rolled back after the test, and fresh schemas.

A projection's or reaction's scenario runs in a :class:`Transaction`: a schema of its own and
the view's tables are created inside it and everything is rolled back when it ends, so tests
leave nothing behind and need no committed schema each. Tests that run real workers or a
real ``Application`` get a committed schema of their own (:func:`fresh_schema`), dropped
afterwards.
"""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class Transaction:
    """A connection inside a transaction on the test database, rolled back when it ends.

    ``schema`` is a schema of the transaction's own, created and migrated inside it
    (eventkit's tables, the reactions' ledger among them: about 30 ms here), in which the
    scenarios create their views' tables: nothing a test does there is seen by anyone else
    or left behind, and no data of a real schema is seen by the test. Nothing commits:
    psycopg refuses ``commit()`` inside it, and blocks of ``conn.transaction()`` are
    savepoints.
    """

    conn: psycopg.Connection[Any]
    schema: str

    @classmethod
    @contextmanager
    def open(cls, settings: Settings | None = None) -> Iterator[Transaction]:
        """A transaction on the settings' database: ``DATABASE_URL``, else eventkit's
        embedded server."""
        with cls.connect(resolve_database_url(settings or Settings.from_env())) as transaction:
            yield transaction

    @classmethod
    @contextmanager
    def connect(cls, url: str) -> Iterator[Transaction]:
        """A transaction on the database at ``url``."""
        schema = f"eventkit_scenario_{uuid4().hex[:12]}"
        with (
            psycopg.connect(url, autocommit=True, application_name="eventkit:test") as conn,
            # force_rollback: the block ends in a rollback even when it ends normally.
            conn.transaction(force_rollback=True),
        ):
            migrate(conn, schema)
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

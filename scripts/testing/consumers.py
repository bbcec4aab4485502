"""What the projection and reaction scenarios share: the consumer's tables in the test's
transaction, the events as the log gives them, and reading the tables back."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, LiteralString, TypeVar, cast

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.rows import dict_row

from eventkit.infrastructure.transcoding import MemoryKeysPydanticMapper
from eventkit.projections.projection import Consumer, create_tables, table_identifiers
from eventkit.projections.queries import Queries
from eventkit.testing.database import Transaction
from eventkit.testing.events import Given, Logged, Streams

Q = TypeVar("Q", bound=Queries)


class ConsumerScenario:
    """A projection or reaction with its tables made in ``transaction``."""

    kind = "consumer"

    def __init__(self, consumer: Consumer, transaction: Transaction) -> None:
        self.consumer = consumer
        self.transaction = transaction
        self.conn = transaction.conn
        self.schema = transaction.schema
        cls = type(consumer)
        self.name = cls.name
        self.tables = table_identifiers(self.schema, cls)
        self._topics = set(cls.topics())
        self._streams = Streams()
        self._mapper = MemoryKeysPydanticMapper()
        with self.conn.transaction():
            create_tables(self.conn, self.schema, cls)
        #: Events given that the consumer has no handler for: its follower never reads them.
        self.skipped: list[Any] = []

    def _log(self, given: Iterable[Given]) -> list[Logged]:
        """The given events as the consumer's follower reads them: numbered, logged,
        decoded, and only those of the types it handles."""
        logged = self._streams.logged(self._streams.events(given), self._mapper)
        for item in logged:
            if item.notification.topic not in self._topics:
                self.skipped.append(item.event)
        return [item for item in logged if item.notification.topic in self._topics]

    def rows(
        self,
        table: str,
        *,
        order_by: str | Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The rows of one of the consumer's tables, as dicts of column to value, ordered by
        ``order_by`` (a column or columns; by default the first column), with only
        ``columns`` when given."""
        identifier = self._table(table)
        names = [order_by] if isinstance(order_by, str) else list(order_by or ())
        order = sql.SQL(", ").join(sql.Identifier(n) for n in names) if names else sql.SQL("1")
        selected = (
            sql.SQL(", ").join(sql.Identifier(c) for c in columns) if columns else sql.SQL("*")
        )
        statement = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(selected, identifier, order)
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cursor:
            return cursor.execute(statement).fetchall()

    def query(self, query: LiteralString, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run ``query`` in the test's transaction, with ``{table}`` placeholders naming
        the consumer's tables as in its handlers."""
        statement = sql.SQL(query).format(**self._placeholders())
        with self.conn.transaction():
            return self.conn.execute(statement, params).fetchall()

    def _placeholders(self) -> dict[str, sql.Identifier]:
        return self.tables

    def _table(self, table: str) -> sql.Identifier:
        found = self.tables.get(table)
        if found is None:
            raise KeyError(
                f"{self.kind} {self.name!r} has no table {table!r}; its tables: "
                f"{', '.join(self.tables) or 'none'}"
            )
        return found


class TransactionPool:
    """Hands a query class the test's connection in place of a pool's (each query in a
    savepoint of the test's transaction, so a failed one leaves the transaction usable)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        with self.conn.transaction():
            yield self.conn


def bound_queries(queries: type[Q], transaction: Transaction) -> Q:
    """An instance of the query class ``queries`` that reads in ``transaction``."""
    pool = cast(psycopg_pool.ConnectionPool, TransactionPool(transaction.conn))
    return queries(pool, transaction.schema)


__all__ = ["ConsumerScenario", "TransactionPool", "bound_queries"]

"""The projection API: a read model is a class with one handler per event type.

```python
class OrderSummaries(Projection):
    name = "order_summaries"
    tables = (Table("order_summaries", "CREATE TABLE {table} (order_id uuid PRIMARY KEY, ...)"),)

    @singledispatchmethod
    def apply(self, event: object, context: Context) -> None:
        raise UnhandledEventError(self, event)

    @apply.register
    def _(self, event: Order.Placed, context: Context) -> None:
        context.execute("INSERT INTO {order_summaries} ...", (...))
```

Handlers write to the projection's view through ``context``, in the transaction that
also records the projection's position. ``{name}`` placeholders in SQL name the view's
tables, so the same handlers fill the live tables or, during a rebuild, new ones beside
them. The event types a projection consumes are the types it registered handlers for; the
follower reads only those from the log.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import singledispatchmethod
from typing import Any, ClassVar, LiteralString

import psycopg
from eventsourcing.utils import get_topic
from psycopg import sql

from infrastructure.errors import EventkitError
from infrastructure.log import LoggedNotification


@dataclass(frozen=True)
class Table:
    """One table of a view: its name and its DDL, with ``{table}`` for the qualified name.

    The DDL may hold several statements (indexes) separated by ``;``. Index names are
    derived from the table name by PostgreSQL when omitted; omit them, so a rebuilt copy of
    the table gets indexes of its own.
    """

    name: str
    ddl: LiteralString


class UnhandledEventError(EventkitError):
    """A projection was given an event type it has no handler for."""

    def __init__(self, projection: Projection, event: object) -> None:
        super().__init__(
            f"projection {projection.name!r} has no handler for {type(event).__qualname__}"
        )


@dataclass(frozen=True)
class Result:
    """The result of :meth:`Context.execute`: a row count and rows, whenever they are asked.

    Handlers may run in psycopg's pipeline mode, where results arrive later; reading one
    waits for it, so a handler that never reads results never waits for a round trip.
    """

    cursor: psycopg.Cursor[Any]
    pipeline: psycopg.Pipeline | None

    @property
    def rowcount(self) -> int:
        if self.pipeline is not None:
            self.pipeline.sync()
        return self.cursor.rowcount

    def fetchone(self) -> Any:
        return self.cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self.cursor.fetchall()


@dataclass
class Context:
    """What a handler may use: the transaction's connection, the view's tables, the event's
    notification (position and recorded time)."""

    conn: psycopg.Connection[Any]
    tables: dict[str, sql.Identifier]
    notification: LoggedNotification
    pipeline: psycopg.Pipeline | None = None
    statements: dict[str, bytes] = field(default_factory=dict)

    def execute(self, query: LiteralString, params: Sequence[Any] = ()) -> Result:
        """Run ``query`` with ``{table}`` placeholders filled with the view's tables."""
        statement = self.statements.get(query)
        if statement is None:
            statement = sql.SQL(query).format(**self.tables).as_bytes(self.conn)
            self.statements[query] = statement
        return Result(self.conn.execute(statement, params), self.pipeline)


class Projection(ABC):
    """A read model: a name, the tables of its view, and a handler per event type."""

    name: ClassVar[str]
    tables: ClassVar[tuple[Table, ...]]

    @singledispatchmethod
    def apply(self, event: object, context: Context) -> None:
        raise UnhandledEventError(self, event)

    @classmethod
    def event_types(cls) -> list[type[Any]]:
        """The event classes this projection has handlers for."""
        registry = cls.__dict__.get("apply") or cls.apply
        assert isinstance(registry, singledispatchmethod)
        return [t for t in registry.dispatcher.registry if t is not object]

    @classmethod
    def topics(cls) -> list[str]:
        """The topics of :meth:`event_types`: what the follower reads for this projection."""
        return sorted(get_topic(t) for t in cls.event_types())


def table_identifiers(
    schema: str, projection: type[Projection], suffix: str = ""
) -> dict[str, sql.Identifier]:
    """The qualified names of a projection's tables (with ``suffix`` for a rebuild's copy)."""
    return {t.name: sql.Identifier(schema, t.name + suffix) for t in projection.tables}


def create_tables(
    conn: psycopg.Connection[Any], schema: str, projection: type[Projection], suffix: str = ""
) -> None:
    """Create those of the projection's tables that do not exist yet."""
    names = table_identifiers(schema, projection, suffix)
    for t in projection.tables:
        row = conn.execute(
            "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
            (schema, t.name + suffix),
        ).fetchone()
        if row is None or not row[0]:
            conn.execute(sql.SQL(t.ddl).format(table=names[t.name]))


def drop_tables(
    conn: psycopg.Connection[Any], schema: str, projection: type[Projection], suffix: str = ""
) -> None:
    for identifier in table_identifiers(schema, projection, suffix).values():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(identifier))

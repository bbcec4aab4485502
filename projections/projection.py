"""Consumers of the log: a projection (read model) or a reaction, one handler per event type.

```python
class OrderSummaries(Projection):
    name = "order_summaries"
    tables = (Table("order_summaries", "CREATE TABLE {table} (order_id uuid PRIMARY KEY, ...)"),)

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        context.execute("INSERT INTO {order_summaries} ...", (...))
```

Handlers write to the projection's view through ``context``, in the transaction that
also records the projection's position. ``{name}`` placeholders in SQL name the view's
tables, so the same handlers fill the live tables or, during a rebuild, new ones beside
them. The event types a consumer reads are the types it has handlers for and the declared
classes derived from them; the follower reads only those from the log.
"""

from __future__ import annotations

import inspect
import weakref
from abc import ABC
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import singledispatchmethod
from inspect import getattr_static
from itertools import groupby
from operator import itemgetter
from typing import Any, ClassVar, LiteralString, Self, TypeVar, get_type_hints, overload

import psycopg
from psycopg import pq, sql

from eventkit.domain.names import EVENT_TYPES
from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.leases import Lease
from eventkit.infrastructure.log import LoggedNotification, StartFrom
from eventkit.infrastructure.partitions import PartitionKey


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
    """A projection or reaction was given an event type it has no handler for."""

    def __init__(self, consumer: Consumer, event: object) -> None:
        kind = "projection" if isinstance(consumer, Projection) else "reaction"
        super().__init__(f"{kind} {consumer.name!r} has no handler for {type(event).__qualname__}")


class Result:
    """The outcome of one :meth:`Context.execute`: its row count and rows, read when asked.

    In a worker's batch, statements are queued and sent in groups (one
    ``executemany`` per run of the same statement, in psycopg's pipeline mode), so a
    handler that only writes never waits for a round trip. Reading a result sends what is
    queued first, then reads: the handler sees the same values as if every statement had
    run at once.
    """

    __slots__ = ("_flush", "_next", "_rowcount", "_rows")

    def __init__(self, flush: Callable[[], None] | None = None) -> None:
        self._flush = flush
        self._rowcount = -1
        self._rows: list[Any] = []
        self._next = 0

    def _fill(self, cursor: psycopg.Cursor[Any]) -> None:
        self._flush = None
        self._rowcount = cursor.rowcount
        self._rows = cursor.fetchall() if cursor.description is not None else []

    def _settle(self) -> None:
        if self._flush is not None:
            self._flush()

    @property
    def rowcount(self) -> int:
        self._settle()
        return self._rowcount

    def fetchone(self) -> Any:
        self._settle()
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        self._settle()
        rows = self._rows[self._next :]
        self._next = len(self._rows)
        return rows


class Context:
    """What a handler may use: the view's tables through :meth:`execute`, the event's
    notification (position and recorded time), and the transaction's connection.

    One context serves a whole batch; the worker sets :attr:`notification` per event.
    """

    __slots__ = (
        "_conn",
        "_deferred",
        "_pending",
        "_statements",
        "lease",
        "notification",
        "tables",
    )

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        tables: dict[str, sql.Identifier],
        notification: LoggedNotification,
        *,
        deferred: bool = False,
        statements: dict[str, bytes] | None = None,
        lease: Lease | None = None,
    ) -> None:
        #: The lease the worker applies the batch under (its partition, owner and
        #: generation); None outside a worker.
        self.lease = lease
        self._conn = conn
        self.tables = tables
        self.notification = notification
        self._deferred = deferred
        self._statements = {} if statements is None else statements
        self._pending: list[tuple[bytes, Sequence[Any], Result, _Check | None]] = []

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The transaction's connection, for what :meth:`execute` cannot do.

        Queued statements are sent first, so what the handler runs on it comes after them.
        """
        self.flush()
        return self._conn

    def execute(
        self,
        query: LiteralString,
        params: Sequence[Any] = (),
        *,
        expect_rows: int | None = None,
        otherwise: Callable[[int], BaseException] | None = None,
    ) -> Result:
        """Run ``query`` with ``{table}`` placeholders filled with the view's tables.

        ``expect_rows`` checks the statement's row count without waiting for it: when the
        statement is sent (at once, or with the batch) and the count differs, the handler's
        event fails with ``otherwise(count)``, or with :class:`UnexpectedRowCountError`.
        """
        statement = self._statements.get(query)
        if statement is None:
            statement = sql.SQL(query).format(**self.tables).as_bytes(self._conn)
            self._statements[query] = statement
        check = None if expect_rows is None else _Check(expect_rows, otherwise, self.notification)
        if self._deferred:
            result = Result(self.flush)
            self._pending.append((statement, params, result, check))
            return result
        result = Result()
        with self._conn.cursor() as cursor:
            if self._conn.info.pipeline_status == pq.PipelineStatus.OFF:
                cursor.execute(statement, params)
            else:
                with self._conn.pipeline() as pipeline:
                    cursor.execute(statement, params)
                    pipeline.sync()  # the row count is known only once the result is in
            result._fill(cursor)
        if check is not None:
            check.verify(result._rowcount, statement)
        return result

    def flush(self, *, results: bool = True) -> None:
        """Send the queued statements, in order, give each its result and run the checks.

        With ``results=False`` (the worker, once every handler of the batch has returned)
        only checked statements' results are fetched: nothing else can read them any more.
        """
        if not self._pending:
            return
        with self._conn.pipeline():
            self.send_queued(results=results)

    def has_queued(self) -> bool:
        """Whether statements are queued, not sent yet."""
        return bool(self._pending)

    def send_queued(self, *, results: bool = True) -> None:
        """Send the queued statements on the connection's pipeline, which the caller has
        open (a reaction sends them with its ledger record and ``COMMIT`` in one round
        trip); otherwise as :meth:`flush`."""
        pending, self._pending = self._pending, []
        if pending:
            for statement, group in groupby(pending, key=itemgetter(0)):
                entries = list(group)
                fetch = results or any(e[3] is not None for e in entries)
                # A cursor per group: in pipeline mode a cursor that ran an earlier
                # executemany would also hand out that one's results.
                with self._conn.cursor() as cursor:
                    cursor.executemany(statement, [e[1] for e in entries], returning=fetch)
                    for i, (_, _, result, check) in enumerate(entries):
                        if not fetch:
                            result._flush = _expired
                            continue
                        if i:
                            cursor.nextset()
                        result._fill(cursor)
                        if check is not None:
                            check.verify(result._rowcount, statement)


@dataclass(frozen=True)
class _Check:
    expected: int
    otherwise: Callable[[int], BaseException] | None
    notification: LoggedNotification

    def verify(self, rowcount: int, statement: bytes) -> None:
        if rowcount == self.expected:
            return
        if self.otherwise is not None:
            raise self.otherwise(rowcount)
        raise UnexpectedRowCountError(self.expected, rowcount, self.notification, statement)


class UnexpectedRowCountError(EventkitError):
    """A handler's statement touched another number of rows than the handler expected."""

    def __init__(
        self, expected: int, actual: int, notification: LoggedNotification, statement: bytes
    ) -> None:
        n = notification
        super().__init__(
            f"stream {n.originator_id} version {n.originator_version} (position {n.position}, "
            f"{n.topic}): a statement touched {actual} row(s), not {expected}: "
            f"{statement.decode(errors='replace')}"
        )
        self.expected = expected
        self.actual = actual


def _expired() -> None:
    raise EventkitError(
        "a handler read a statement's result after its batch was sent; read results in "
        "the handler that ran the statement"
    )


_HANDLES = "__eventkit_handles__"
#: Each consumer class's handlers by event class, collected on first use.
_HANDLERS: weakref.WeakKeyDictionary[
    type[Any], dict[type[Any], Callable[[Any, Any, Any], None]]
] = weakref.WeakKeyDictionary()
_F = TypeVar("_F", bound=Callable[..., Any])


@overload
def handles(func: _F, /) -> _F: ...
@overload
def handles(*event_types: type[Any]) -> Callable[[_F], _F]: ...
def handles(*args: Any) -> Any:
    """Mark a method of a projection or reaction as the handler of an event type.

    ``@handles`` alone takes the type from the annotation of the method's ``event``
    parameter; ``@handles(Order.Paid, Order.Shipped)`` names the types. A handler of a base
    class (``Order.Event``) receives the events of every declared class derived from it,
    unless a handler of a more specific class takes them.
    """
    if len(args) == 1 and callable(args[0]) and not isinstance(args[0], type):
        setattr(args[0], _HANDLES, ())
        return args[0]
    for event_type in args:
        if not isinstance(event_type, type):
            raise TypeError(f"@handles takes event classes, got {event_type!r}")

    def mark(func: _F) -> _F:
        setattr(func, _HANDLES, tuple(args))
        return func

    return mark


class Consumer:
    """A projection or a reaction: a name, and one handler per event type.

    Handlers are methods marked with :func:`handles` (or, for code written for
    eventsourcing's projections, registrations on a ``functools.singledispatchmethod``
    named :attr:`dispatch_method`); the follower reads exactly the event types they
    accept, subclasses included.
    """

    name: ClassVar[str]
    #: ``apply`` for projections, ``react`` for reactions (singledispatchmethod handlers).
    dispatch_method: ClassVar[str]
    #: The tables the handlers write, created by the runtime when they do not exist.
    tables: ClassVar[tuple[Table, ...]] = ()
    #: What splits the consumer's events into partitions: "stream" (order per stream),
    #: "type" (order per event type), or a function of the notification returning a key.
    partition_key: ClassVar[PartitionKey] = "stream"
    #: Partitions when no operator has set a number (``eventkit partitions NAME --set``).
    partitions: ClassVar[int] = 1
    #: Where the consumer starts the first time it runs (no recorded position yet):
    #: ``"origin"`` (every event in the log), ``"head"`` (only events after now), a
    #: :class:`Position`, or an aware ``datetime`` (the first event recorded at or after
    #: it). Projections start at the origin, reactions at the head.
    start_from: ClassVar[StartFrom] = "origin"

    @classmethod
    def construct(cls, runtime: Any) -> Self:
        """Make the consumer a worker runs. ``runtime`` (an :class:`eventkit.Runtime`)
        gives the application's services (``runtime.application(Shop)``) and settings
        (``runtime.setting("NAME")``); the default calls the class with no arguments."""
        return cls()

    @classmethod
    def handlers(cls) -> dict[type[Any], Callable[[Any, Any, Any], None]]:
        """The handler of each handled event class (looked up once per class)."""
        cached = _HANDLERS.get(cls)
        if cached is None:
            cached = _HANDLERS[cls] = _collect_handlers(cls)
        return cached

    @classmethod
    def event_types(cls) -> list[type[Any]]:
        """The event classes this consumer has handlers for."""
        return list(cls.handlers())

    @classmethod
    def handler(cls, event_type: type[Any]) -> Callable[[Any, Any, Any], None]:
        """The function an event of ``event_type`` goes to: the handler of the nearest
        class in its MRO. Call it as ``handler(consumer, event, context)``."""
        handlers = cls.handlers()
        for klass in event_type.__mro__:
            found = handlers.get(klass)
            if found is not None:
                return found
        return _unhandled

    @classmethod
    def topics(cls) -> list[str]:
        """What the follower reads for this consumer: every stored type name (name, aliases,
        module paths) of the handled event classes and of the declared classes derived
        from them."""
        names: set[str] = set()
        for handled in cls.event_types():
            for declared in EVENT_TYPES.subclasses(handled):
                names.update(EVENT_TYPES.stored_names(declared))
        return sorted(names)


def _unhandled(consumer: Consumer, event: object, context: object) -> None:
    raise UnhandledEventError(consumer, event)


def _collect_handlers(cls: type[Consumer]) -> dict[type[Any], Callable[[Any, Any, Any], None]]:
    """The handlers of ``cls``: ``@handles`` methods (a subclass's method overrides its
    base's of the same name) and a singledispatchmethod's registrations."""
    found: dict[type[Any], tuple[str, Callable[[Any, Any, Any], None]]] = {}

    def add(event_type: type[Any], where: str, func: Callable[[Any, Any, Any], None]) -> None:
        if event_type in found and found[event_type][0] != where:
            raise TypeError(
                f"{cls.__qualname__} handles {event_type.__qualname__} twice: in "
                f"{found[event_type][0]} and in {where}"
            )
        found[event_type] = (where, func)

    methods: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        methods.update(vars(klass))
    for attribute, value in methods.items():
        marked = getattr(value, _HANDLES, None)
        if marked is None:
            continue
        for event_type in marked or (_annotated_event_type(cls, value),):
            add(event_type, f"{attribute}()", value)
    dispatch = getattr(cls, "dispatch_method", None)
    registry = None if dispatch is None else getattr_static(cls, dispatch, None)
    if isinstance(registry, singledispatchmethod):
        for event_type, func in registry.dispatcher.registry.items():
            if event_type is not object:
                add(event_type, f"{dispatch}.register", func)
    return {event_type: func for event_type, (_, func) in found.items()}


def _annotated_event_type(cls: type[Any], func: Callable[..., Any]) -> type[Any]:
    parameters = list(inspect.signature(func).parameters)
    if len(parameters) != 3:
        raise TypeError(
            f"{cls.__qualname__}.{func.__name__} must take (self, event, context), "
            f"not ({', '.join(parameters)})"
        )
    try:
        hints = get_type_hints(func)
    except NameError as e:
        raise TypeError(
            f"{cls.__qualname__}.{func.__name__}: cannot resolve the annotation of its "
            f"event parameter ({e}); name the type: @handles(EventClass)"
        ) from None
    event_type = hints.get(parameters[1])
    if not isinstance(event_type, type):
        raise TypeError(
            f"{cls.__qualname__}.{func.__name__}: annotate its {parameters[1]!r} parameter "
            f"with an event class, or name the type: @handles(EventClass)"
        )
    return event_type


class Projection(Consumer, ABC):
    """A read model: a name, the tables of its view, and a handler per event type."""

    dispatch_method = "apply"


def table_identifiers(
    schema: str, projection: type[Consumer], suffix: str = ""
) -> dict[str, sql.Identifier]:
    """The qualified names of a projection's tables (with ``suffix`` for a rebuild's copy)."""
    return {t.name: sql.Identifier(schema, t.name + suffix) for t in projection.tables}


def create_tables(
    conn: psycopg.Connection[Any], schema: str, projection: type[Consumer], suffix: str = ""
) -> None:
    """Create those of the projection's tables that do not exist yet.

    Call it in a transaction: workers of several partitions start at once, and two
    concurrent CREATE TABLEs of one name fail, so the check and the creation hold a
    transaction-level advisory lock per projection.
    """
    names = table_identifiers(schema, projection, suffix)
    if projection.tables:
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"eventkit:{schema}:create:{projection.name}{suffix}",),
        )
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

"""The event store's append statement, executed through libpq with binary parameters.

A one-event save is the commonest write an application makes, and it is one ``INSERT``
round trip. Sent through a psycopg cursor, that statement's client side (converting the
query, adapting four parameters through the adapters map, the prepared-statement
bookkeeping, building the cursor and its rows) cost more CPU than the rest of eventkit's
part of the save; with 16 writer processes on 2 cores the client's CPU, not PostgreSQL,
limited the rate (see docs/architecture.md, "The write path", for the figures).

So the ``INSERT`` of n rows (n up to the recorder's ``COPY_THRESHOLD``) is prepared once per
connection under a name of its own, and executed with the parameters already in
PostgreSQL's binary format (uuid as its 16 bytes, bigint as 8 big-endian bytes, the payload
as it is), through psycopg's own ``Connection.wait``: the same non-blocking protocol,
interruption and error handling that psycopg's cursors use, minus the layers in between.
Server errors come back as psycopg's exceptions (``UniqueViolation`` with its diagnostics),
so the recorder's conflict and retry handling is unchanged.

A connection that lost its prepared statements (a pooler that ran ``DISCARD ALL``, say)
gets them prepared again, once, before the error would reach the caller.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import weakref
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors, pq
from psycopg.generators import execute

from infrastructure.errors import PersistenceError

_INT8 = struct.Struct("!q")
#: The parameters' type oids (uuid, int8, text, bytea) and formats (1 binary, 0 text).
_TYPES = (2950, 20, 25, 17)
_FORMATS = (1, 1, 0, 1)
_TUPLES_OK = int(pq.ExecStatus.TUPLES_OK)
_COMMAND_OK = int(pq.ExecStatus.COMMAND_OK)
_FATAL_ERROR = int(pq.ExecStatus.FATAL_ERROR)
#: SQLSTATEs: the named statement is missing / is there already.
_UNDEFINED_STATEMENT = "26000"
_DUPLICATE_STATEMENT = "42P05"

Row = tuple[UUID, int, str, bytes]

#: The statements prepared on each open connection, by name. A module-level registry,
#: because several recorders (of one schema or several) may share a pool's connections.
_prepared: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[bytes]] = (
    weakref.WeakKeyDictionary()
)
_prepared_lock = threading.Lock()


class AppendStatements:
    """``INSERT ... RETURNING notification_id`` of n rows into one schema's ``stored_events``."""

    def __init__(self, schema: str) -> None:
        self._table = '"{}"."stored_events"'.format(schema.replace('"', '""'))
        # Statement names are per session and at most 63 bytes; schema names may be long.
        self._prefix = (
            "eventkit_append_" + hashlib.blake2b(schema.encode(), digest_size=6).hexdigest()
        )
        self._names: dict[int, bytes] = {}
        self._queries: dict[tuple[int, str], bytes] = {}

    def insert(self, conn: psycopg.Connection[Any], rows: list[Row]) -> list[int]:
        """Insert ``rows`` in one statement on ``conn``; return their notification ids."""
        n = len(rows)
        name = self._name(n)
        params: list[bytes | None] = []
        for originator_id, version, topic, state in rows:
            params += (originator_id.bytes, _INT8.pack(version), topic.encode(), state)
        formats = _FORMATS * n
        if not conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            # psycopg opens the transaction of a non-autocommit connection before its first
            # statement; libpq would run this one on its own. Let psycopg do both.
            with conn.cursor() as cur:
                cur.execute(self._query(n, "%s"), [value for row in rows for value in row])
                return [r[0] for r in cur.fetchall()]
        with conn.lock:
            if name not in _statements_of(conn):
                self._prepare(conn, name, n)
            result = _run(conn, name, params, formats)
            if result.status == _FATAL_ERROR and _sqlstate(result) == _UNDEFINED_STATEMENT:
                # Prepared statements were dropped under us (DISCARD ALL): once more.
                _forget(conn)
                self._prepare(conn, name, n)
                result = _run(conn, name, params, formats)
        if result.status != _TUPLES_OK:
            raise _error(conn, result, f"append of {n} event(s) to {self._table}")
        value = result.get_value
        return [int(value(i, 0) or b"") for i in range(result.ntuples)]

    def _name(self, n: int) -> bytes:
        name = self._names.get(n)
        if name is None:
            name = self._names[n] = f"{self._prefix}_{n}".encode()
        return name

    def _query(self, n: int, placeholder: str) -> bytes:
        """The statement with libpq's ``$1`` placeholders, or psycopg's ``%s``."""
        query = self._queries.get((n, placeholder))
        if query is None:
            params = iter(range(1, 4 * n + 1))
            values = ", ".join(
                "(" + ", ".join(placeholder.replace("N", str(next(params))) for _ in range(4)) + ")"
                for _ in range(n)
            )
            query = self._queries[n, placeholder] = (
                f"INSERT INTO {self._table} (originator_id, originator_version, topic, state) "
                f"VALUES {values} RETURNING notification_id"
            ).encode()
        return query

    def _prepare(self, conn: psycopg.Connection[Any], name: bytes, n: int) -> None:
        conn.pgconn.send_prepare(name, self._query(n, "$N"), param_types=_TYPES * n)
        results = conn.wait(execute(conn.pgconn))
        result = results[-1]
        if result.status != _COMMAND_OK and _sqlstate(result) != _DUPLICATE_STATEMENT:
            raise _error(conn, result, f"preparing the append of {n} event(s) to {self._table}")
        with _prepared_lock:
            _prepared.setdefault(conn, set()).add(name)


def _statements_of(conn: psycopg.Connection[Any]) -> set[bytes]:
    with _prepared_lock:
        return _prepared.get(conn) or set()


def _forget(conn: psycopg.Connection[Any]) -> None:
    with _prepared_lock:
        _prepared.pop(conn, None)


def _run(
    conn: psycopg.Connection[Any], name: bytes, params: list[bytes | None], formats: tuple[int, ...]
) -> pq.abc.PGresult:
    conn.pgconn.send_query_prepared(name, params, param_formats=formats)
    results: list[pq.abc.PGresult] = conn.wait(execute(conn.pgconn))
    return results[-1]


def _sqlstate(result: pq.abc.PGresult) -> str | None:
    if result.status != _FATAL_ERROR:
        return None
    code = result.error_field(pq.DiagnosticField.SQLSTATE)
    return code.decode() if code else None


def _error(conn: psycopg.Connection[Any], result: pq.abc.PGresult, what: str) -> Exception:
    """The server's error as psycopg raises it (``UniqueViolation``, ...), else a clear one."""
    if result.status == _FATAL_ERROR:
        return errors.error_from_result(result, encoding=conn.info.encoding)
    return PersistenceError(f"{what}: unexpected result status {pq.ExecStatus(result.status).name}")

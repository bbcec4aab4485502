"""Hot statements run through libpq, with parameters already in PostgreSQL's wire format.

A statement sent through a psycopg cursor pays, on every execution, for converting the
query, adapting each parameter through the adapters map, the prepared-statement
bookkeeping and building the cursor and its rows. For the statements that run once per
save or once per reaction, that client-side work cost more CPU than everything else
eventkit does around them (see docs/architecture.md, "The write path").

A :class:`PreparedStatement` is prepared once per connection under a name derived from its
text, and executed with ``send_query_prepared`` through psycopg's own ``Connection.wait``:
the same non-blocking protocol, interruption and connection-error handling psycopg's
cursors use, minus the layers in between. Server errors are raised as psycopg raises them
(``UniqueViolation`` with its diagnostics, ...). A connection whose prepared statements
were dropped (psycopg runs ``DEALLOCATE ALL`` after a rollback or DDL on a connection where
it prepared statements itself; a pooler may run ``DISCARD ALL``) prepares them again.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors, pq
from psycopg.generators import execute

from eventkit.infrastructure.errors import PersistenceError

TUPLES_OK = int(pq.ExecStatus.TUPLES_OK)
COMMAND_OK = int(pq.ExecStatus.COMMAND_OK)
FATAL_ERROR = int(pq.ExecStatus.FATAL_ERROR)
#: SQLSTATEs: the named statement is missing / is there already.
UNDEFINED_STATEMENT = "26000"
DUPLICATE_STATEMENT = "42P05"

#: Parameter type oids.
UUID_OID, INT8_OID, INT4_OID, TEXT_OID, BYTEA_OID = 2950, 20, 23, 25, 17

#: The statements prepared on each open connection, by name. Module-level, because
#: several recorders and executors may share a pool's connections.
_prepared: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[bytes]] = (
    weakref.WeakKeyDictionary()
)
_prepared_lock = threading.Lock()

Params = Sequence[bytes | None]


class PreparedStatement:
    """One statement with ``$n`` placeholders and the types of its parameters."""

    def __init__(self, query: str, types: Sequence[int]) -> None:
        self.query = query.encode()
        self.types = tuple(types)
        digest = hashlib.blake2b(self.query, digest_size=8).hexdigest()
        self.name = f"eventkit_{digest}".encode()

    def run(
        self, conn: psycopg.Connection[Any], params: Params, formats: Sequence[int]
    ) -> pq.abc.PGresult:
        """Execute on ``conn`` (on its own or in the transaction ``conn`` has open).

        Raises the server's error as psycopg does. Out of a transaction, a statement the
        connection lost is prepared again and run once more; in one, the lost statement
        aborted the transaction, so :class:`StatementLostError` tells the caller to start
        its transaction again (the statement is prepared again by then).
        """
        with conn.lock:
            if self.name not in _statements_of(conn):
                self._prepare(conn)
            result = self._send(conn, params, formats)
            if result.status == FATAL_ERROR and sqlstate(result) == UNDEFINED_STATEMENT:
                _forget(conn)
                in_transaction = conn.pgconn.transaction_status == pq.TransactionStatus.INERROR
                if in_transaction:
                    _command(conn, b"ROLLBACK")
                self._prepare(conn)
                if in_transaction:
                    raise StatementLostError(
                        "a prepared statement was dropped from the connection in the "
                        "middle of a transaction; the transaction was rolled back"
                    )
                result = self._send(conn, params, formats)
        if result.status not in (TUPLES_OK, COMMAND_OK):
            raise error(conn, result, "executing a prepared statement")
        return result

    def begin_and_run(
        self, conn: psycopg.Connection[Any], arguments: str, *, commit: bool = False
    ) -> pq.abc.PGresult:
        """``BEGIN`` and this statement, in one round trip; the transaction stays open,
        or with ``commit`` is committed in the same round trip.

        ``arguments`` are the statement's parameters as SQL literals (quote text with
        :func:`literal`): the commands go as one simple query, ``BEGIN; EXECUTE
        name(arguments)`` (``; COMMIT``), which runs the prepared statement by name. The
        statement's result (``COMMIT``'s with ``commit``) comes back in text format. On an
        error the transaction is left aborted, for the caller to roll back.
        """
        query = b"BEGIN; EXECUTE " + self.name + b"(" + arguments.encode() + b")"
        if commit:
            query += b"; COMMIT"
        with conn.lock:
            for attempt in (1, 2):
                if self.name not in _statements_of(conn):
                    self._prepare(conn)
                result = _command(conn, query)
                if attempt == 1 and sqlstate(result) == UNDEFINED_STATEMENT:
                    # Dropped from the connection: end the aborted transaction, again.
                    _command(conn, b"ROLLBACK")
                    _forget(conn)
                    continue
                break
        if result.status not in (TUPLES_OK, COMMAND_OK):
            raise error(conn, result, "executing a prepared statement")
        return result

    def _send(
        self, conn: psycopg.Connection[Any], params: Params, formats: Sequence[int]
    ) -> pq.abc.PGresult:
        conn.pgconn.send_query_prepared(self.name, params, param_formats=formats)
        results: list[pq.abc.PGresult] = conn.wait(execute(conn.pgconn))
        return results[-1]

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        conn.pgconn.send_prepare(self.name, self.query, param_types=self.types)
        results: list[pq.abc.PGresult] = conn.wait(execute(conn.pgconn))
        result = results[-1]
        if result.status != COMMAND_OK and sqlstate(result) != DUPLICATE_STATEMENT:
            raise error(conn, result, f"preparing {self.query.decode()[:200]}")
        with _prepared_lock:
            _prepared.setdefault(conn, set()).add(self.name)


def connection_lost(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` is gone (closed, or broken by a lost server or network): told by
    the connection's state, not by an error's class. psycopg classes a statement timeout,
    a lock timeout or a value too large to index as ``OperationalError`` too, and those
    leave the connection working: they are the failure of the work that ran them."""
    return conn.closed or conn.broken


class StatementLostError(psycopg.OperationalError):
    """A prepared statement vanished inside a transaction, which is now rolled back."""


def command(conn: psycopg.Connection[Any], statement: bytes) -> None:
    """Run a parameterless command (``BEGIN``, ``COMMIT``, ``ROLLBACK``) through libpq."""
    with conn.lock:
        result = _command(conn, statement)
    if result.status != COMMAND_OK:
        raise error(conn, result, statement.decode())


def _command(conn: psycopg.Connection[Any], statement: bytes) -> pq.abc.PGresult:
    conn.pgconn.send_query(statement)
    results: list[pq.abc.PGresult] = conn.wait(execute(conn.pgconn))
    return results[-1]


def literal(conn: psycopg.Connection[Any], value: str) -> str:
    """``value`` as a quoted SQL string literal for ``conn``."""
    quoted: bytes = pq.Escaping(conn.pgconn).escape_literal(value.encode())
    return quoted.decode()


def numbered(query: str) -> str:
    """``query`` with psycopg's ``%s`` placeholders as libpq's ``$1``, ``$2``, ... (not
    inside quoted identifiers or string literals)."""
    out: list[str] = []
    quote: str | None = None
    n = 0
    i = 0
    while i < len(query):
        c = query[i]
        if quote is not None:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif query.startswith("%s", i):
            n += 1
            out.append(f"${n}")
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def sqlstate(result: pq.abc.PGresult) -> str | None:
    if result.status != FATAL_ERROR:
        return None
    code = result.error_field(pq.DiagnosticField.SQLSTATE)
    return code.decode() if code else None


def error(conn: psycopg.Connection[Any], result: pq.abc.PGresult, what: str) -> Exception:
    """The server's error as psycopg raises it (``UniqueViolation``, ...), else a clear one."""
    if result.status == FATAL_ERROR:
        return errors.error_from_result(result, encoding=conn.info.encoding)
    return PersistenceError(f"{what}: unexpected result status {pq.ExecStatus(result.status).name}")


def _statements_of(conn: psycopg.Connection[Any]) -> set[bytes]:
    with _prepared_lock:
        return _prepared.get(conn) or set()


def _forget(conn: psycopg.Connection[Any]) -> None:
    with _prepared_lock:
        _prepared.pop(conn, None)

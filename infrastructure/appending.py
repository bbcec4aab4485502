"""The event store's append statement, executed through libpq with binary parameters.

A one-event save is the commonest write an application makes, and it is one ``INSERT``
round trip. Through a psycopg cursor, that statement's client side cost more CPU than the
rest of eventkit's part of the save; with 16 writers on 2 cores the clients' CPU, not
PostgreSQL, limited the rate (see docs/architecture.md, "The write path").

So the ``INSERT`` of n rows (n up to the recorder's ``COPY_THRESHOLD``) is a
:class:`~infrastructure.libpq.PreparedStatement`, executed with the parameters already in
PostgreSQL's binary format (uuid as its 16 bytes, bigint as 8 big-endian bytes, the
payload as it is). Server errors come back as psycopg's exceptions (``UniqueViolation``
with its diagnostics), so the recorder's conflict and retry handling is unchanged.
"""

from __future__ import annotations

import struct
from typing import Any
from uuid import UUID

import psycopg
from psycopg import pq, sql

from eventkit.infrastructure.libpq import (
    BYTEA_OID,
    INT8_OID,
    TEXT_OID,
    UUID_OID,
    PreparedStatement,
    numbered,
)

_INT8 = struct.Struct("!q")
_TYPES = (UUID_OID, INT8_OID, TEXT_OID, BYTEA_OID)
#: The parameters' formats: 1 binary, 0 text.
_FORMATS = (1, 1, 0, 1)

#: The columns an append writes (the rest take their defaults).
COLUMNS = "originator_id, originator_version, topic, state"

Row = tuple[UUID, int, str, bytes]


class AppendStatements:
    """``INSERT ... RETURNING notification_id`` of n rows into one schema's ``stored_events``."""

    def __init__(self, schema: str, *, prepared: bool = True) -> None:
        """``prepared=False``: every insert goes through psycopg's cursor, unprepared as
        far as the connection's ``prepare_threshold`` says (for poolers that cannot keep
        a connection's prepared statements)."""
        self._table = sql.Identifier(schema, "stored_events")
        self._use_prepared = prepared
        self._prepared: dict[int, PreparedStatement] = {}
        self._queries: dict[int, str] = {}

    def insert(self, conn: psycopg.Connection[Any], rows: list[Row]) -> list[int]:
        """Insert ``rows`` in one statement on ``conn``; return their notification ids."""
        n = len(rows)
        if not self._use_prepared or (
            not conn.autocommit and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        ):
            # psycopg opens the transaction of a non-autocommit connection before its first
            # statement; libpq would run this one on its own. Let psycopg do both.
            with conn.cursor() as cur:
                cur.execute(self._query(n).encode(), [value for row in rows for value in row])
                return [r[0] for r in cur.fetchall()]
        statement = self._prepared.get(n)
        if statement is None:
            statement = self._prepared[n] = PreparedStatement(numbered(self._query(n)), _TYPES * n)
        params: list[bytes | None] = []
        for originator_id, version, topic, state in rows:
            params += (originator_id.bytes, _INT8.pack(version), topic.encode(), state)
        result = statement.run(conn, params, _FORMATS * n)
        value = result.get_value
        return [int(value(i, 0) or b"") for i in range(result.ntuples)]

    def _query(self, n: int) -> str:
        """The ``INSERT`` of ``n`` rows, with psycopg's ``%s`` placeholders."""
        query = self._queries.get(n)
        if query is None:
            values = sql.SQL(", ").join(sql.SQL("(%s, %s, %s, %s)") for _ in range(n))
            query = self._queries[n] = (
                sql.SQL("INSERT INTO {} ({}) VALUES {} RETURNING notification_id")
                .format(self._table, sql.SQL(COLUMNS), values)
                .as_string(None)
            )
        return query

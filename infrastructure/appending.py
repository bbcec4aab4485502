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
from dataclasses import dataclass
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
)

_INT8 = struct.Struct("!q")
_TYPES = (UUID_OID, INT8_OID, TEXT_OID, BYTEA_OID)
#: The parameters' formats: 1 binary, 0 text.
_FORMATS = (1, 1, 0, 1)
#: An append's metadata parameters (correlation id, causation id, headers as JSON text),
#: sent once per statement and shared by its rows; then its idempotency key.
_METADATA_TYPES = (TEXT_OID, TEXT_OID, TEXT_OID)
_KEY_TYPES = (TEXT_OID,)

#: The columns an append writes (the rest take their defaults).
COLUMNS = "originator_id, originator_version, topic, state"
#: The columns an append with metadata writes besides.
METADATA_COLUMNS = "correlation_id, causation_id, headers"

Row = tuple[UUID, int, str, bytes]


@dataclass(frozen=True)
class AppendOptions:
    """What a save appends besides its rows: the metadata its events carry, and the
    idempotency key recorded with their notification ids in the same transaction."""

    correlation_id: str | None = None
    causation_id: str | None = None
    #: The headers as JSON text, or None.
    headers: str | None = None
    idempotency_key: str | None = None

    @property
    def has_metadata(self) -> bool:
        return (
            self.correlation_id is not None
            or self.causation_id is not None
            or self.headers is not None
        )


class AppendStatements:
    """``INSERT ... RETURNING notification_id`` of n rows into one schema's ``stored_events``."""

    def __init__(self, schema: str, *, prepared: bool = True) -> None:
        """``prepared=False``: every insert goes through psycopg's cursor, unprepared as
        far as the connection's ``prepare_threshold`` says (for poolers that cannot keep
        a connection's prepared statements)."""
        self._table = sql.Identifier(schema, "stored_events")
        self._keys = sql.Identifier(schema, "idempotency_keys")
        self._use_prepared = prepared
        self._prepared: dict[tuple[int, bool, bool], PreparedStatement] = {}
        self._queries: dict[tuple[int, bool, bool, bool], str] = {}

    def insert(
        self, conn: psycopg.Connection[Any], rows: list[Row], options: AppendOptions | None = None
    ) -> list[int]:
        """Insert ``rows`` in one statement on ``conn``; return their notification ids.

        With ``options``, the rows carry its metadata and the same statement records its
        idempotency key with the ids (a key recorded already fails the whole statement with
        ``UniqueViolation`` on ``idempotency_keys_pkey``). Without, the statement is the
        plain one: metadata and keys cost nothing to a save that has neither.
        """
        n = len(rows)
        meta = options is not None and options.has_metadata
        key = options is not None and options.idempotency_key is not None
        if not self._use_prepared or (
            not conn.autocommit and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        ):
            # psycopg opens the transaction of a non-autocommit connection before its first
            # statement; libpq would run this one on its own. Let psycopg do both.
            values: list[Any] = []
            for row in rows:
                values += row
                if options is not None and meta:
                    values += (options.correlation_id, options.causation_id, options.headers)
            if options is not None and key:
                values.append(options.idempotency_key)
            with conn.cursor() as cur:
                cur.execute(self._query(n, meta, key, shared=False).encode(), values)
                return [r[0] for r in cur.fetchall()]
        statement = self._prepared.get((n, meta, key))
        if statement is None:
            types = _TYPES * n + (_METADATA_TYPES if meta else ()) + (_KEY_TYPES if key else ())
            statement = self._prepared[(n, meta, key)] = PreparedStatement(
                self._query(n, meta, key, shared=True), types
            )
        params: list[bytes | None] = []
        for originator_id, version, topic, state in rows:
            params += (originator_id.bytes, _INT8.pack(version), topic.encode(), state)
        formats = _FORMATS * n
        if options is not None:
            if meta:
                params += (
                    _text(options.correlation_id),
                    _text(options.causation_id),
                    _text(options.headers),
                )
                formats += (0, 0, 0)
            if key:
                params.append(_text(options.idempotency_key))
                formats += (0,)
        result = statement.run(conn, params, formats)
        value = result.get_value
        return [int(value(i, 0) or b"") for i in range(result.ntuples)]

    def _query(self, n: int, meta: bool, key: bool, *, shared: bool) -> str:
        """The ``INSERT`` of ``n`` rows (with metadata columns, recording a key).

        ``shared``: libpq's numbered placeholders, the metadata sent once after the rows and
        referenced by each row, then the key; else psycopg's ``%s``, the metadata repeated
        in each row.
        """
        cached = self._queries.get((n, meta, key, shared))
        if cached is not None:
            return cached
        width = 4 if not meta or shared else 7
        placeholders = [f"${i}" if shared else "%s" for i in range(1, n * width + 1)]
        shared_meta = [f"${n * 4 + i}" for i in range(1, 4)]
        key_param = f"${n * 4 + (3 if meta else 0) + 1}" if shared else "%s"
        rows = []
        for r in range(n):
            cells = placeholders[r * width : r * width + width]
            if meta:
                cells = (cells if not shared else cells + shared_meta)[:7]
                cells[6] += "::jsonb"
            rows.append("(" + ", ".join(cells) + ")")
        columns = COLUMNS + (", " + METADATA_COLUMNS if meta else "")
        insert = sql.SQL("INSERT INTO {} ({}) VALUES {} RETURNING notification_id").format(
            self._table, sql.SQL(columns), sql.SQL(", ".join(rows))
        )
        if key:
            # The key and the ids it stands for, in the append's own statement: both commit
            # or neither does.
            insert = sql.SQL(
                "WITH e AS ({}), k AS (INSERT INTO {} (idempotency_key, notification_ids) "
                "SELECT {}, array_agg(notification_id ORDER BY notification_id) FROM e) "
                "SELECT notification_id FROM e ORDER BY notification_id"
            ).format(insert, self._keys, sql.SQL(key_param))
        query = self._queries[(n, meta, key, shared)] = insert.as_string(None)
        return query


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode()

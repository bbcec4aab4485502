"""``eventkit bench payload``: an event payload stored in a ``bytea``, ``json`` or ``jsonb``
column, written and read the way eventkit's recorder does it.

For each column type, in scratch tables ``(id bigint PRIMARY KEY, state <type>)`` of a fresh
schema: a binary ``COPY`` of 10,000 rows (one transaction), 1,000 single-row ``INSERT``s
(one transaction each), and a read of 30,000 rows with a binary cursor. Payloads are
serialised before timing; ``json``/``jsonb`` get the text as is (``Json``/``Jsonb`` with an
identity ``dumps``). On reading, ``json``/``jsonb`` go through loaders that return the raw
JSON text as bytes, exactly what ``bytea`` returns, so psycopg parses nothing and all three
hand the application the same thing. Each figure is the median of 3 rounds; the column types
take turns within a round.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format
from psycopg.types.json import Json, Jsonb

from eventkit.benchmarks.report import format_rate, format_table, write_json
from eventkit.infrastructure.database import resolve_database_url
from eventkit.infrastructure.settings import Settings

COLUMN_TYPES = ("bytea", "json", "jsonb")
COPY_ROWS = 10_000
INSERT_ROWS = 1_000
READ_ROWS = 30_000
ROUNDS = 3
READ_MODE = "binary cursor; json/jsonb through loaders returning the raw text as bytes"


@dataclass(frozen=True)
class PayloadResult:
    """One column type's medians, as written to ``--json``."""

    system: str
    copy_rows_per_s: float
    insert_rows_per_s: float
    read_rows_per_s: float
    payload_bytes: float
    stored_bytes: float
    rounds: int = ROUNDS
    read_mode: str = READ_MODE
    suite: str = "payload"


class RawJsonBinaryLoader(Loader):
    """``json`` in binary format is its text: return it as bytes, unparsed."""

    format = Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


class RawJsonbBinaryLoader(Loader):
    """``jsonb`` in binary format is a version byte (1) and the text: return the text."""

    format = Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data[1:])


def sample_payload(rng: random.Random) -> str:
    """A realistic event payload: an order placed, ~300 bytes of nested JSON."""
    placed_at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**7))
    lines = [
        {
            "sku": f"SKU-{rng.randrange(100_000):05d}",
            "quantity": rng.randrange(1, 5),
            "unit_price": f"{rng.randrange(100, 10_000) / 100:.2f}",
        }
        for _ in range(2)
    ]
    payload = {
        "timestamp": placed_at.isoformat(),
        "customer": {
            "id": str(UUID(int=rng.getrandbits(128), version=4)),
            "name": f"Customer {rng.randrange(10**6)}",
            "email": f"customer{rng.randrange(10**6)}@example.com",
        },
        "lines": lines,
        "currency": "EUR",
        "total": f"{rng.randrange(100, 100_000) / 100:.2f}",
    }
    return json.dumps(payload, separators=(",", ":"))


def _as_is(text: Any) -> Any:
    """The ``dumps`` for ``Json``/``Jsonb``: the payload is serialised already."""
    return text


def _wrap(column_type: str, text: str) -> Any:
    if column_type == "bytea":
        return text.encode()
    if column_type == "json":
        return Json(text, dumps=_as_is)
    return Jsonb(text, dumps=_as_is)


class _Round:
    """One round's timings of one column type."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str, column_type: str) -> None:
        self.conn = conn
        self.column_type = column_type
        self.table = sql.Identifier(schema, f"payload_{column_type}")

    def copy(self, rows: list[tuple[int, Any]]) -> float:
        statement = sql.SQL("COPY {} (id, state) FROM STDIN (FORMAT BINARY)").format(self.table)
        started = time.perf_counter()
        with self.conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(["int8", self.column_type])
            for row in rows:
                copy.write_row(row)
        return time.perf_counter() - started

    def insert(self, rows: list[tuple[int, Any]]) -> float:
        statement = sql.SQL("INSERT INTO {} (id, state) VALUES (%s, %s)").format(self.table)
        started = time.perf_counter()
        with self.conn.cursor() as cur:
            for row in rows:
                cur.execute(statement, row)
        return time.perf_counter() - started

    def read(self) -> float:
        statement = sql.SQL("SELECT id, state FROM {}").format(self.table)
        # Set hint bits first, so the timed read does not pay for the writes before it.
        self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.table))
        started = time.perf_counter()
        with self.conn.cursor(binary=True) as cur:
            cur.execute(statement)
            rows = cur.fetchall()
        elapsed = time.perf_counter() - started
        if len(rows) != READ_ROWS or not isinstance(rows[0][1], bytes):
            raise AssertionError(f"read {len(rows)} rows of {type(rows[0][1]).__name__}")
        return elapsed


def measure(conn: psycopg.Connection[Any], schema: str) -> list[PayloadResult]:
    """Create the scratch tables in ``schema`` and measure every column type."""
    rng = random.Random(20260101)
    texts = [sample_payload(rng) for _ in range(READ_ROWS)]
    for column_type in COLUMN_TYPES:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, state {} NOT NULL)").format(
                sql.Identifier(schema, f"payload_{column_type}"), sql.SQL(column_type)
            )
        )
    conn.adapters.register_loader("json", RawJsonBinaryLoader)
    conn.adapters.register_loader("jsonb", RawJsonbBinaryLoader)
    timings: dict[str, dict[str, list[float]]] = {
        t: {"copy": [], "insert": [], "read": []} for t in COLUMN_TYPES
    }
    for _ in range(ROUNDS):
        for column_type in COLUMN_TYPES:
            rows = [(i, _wrap(column_type, text)) for i, text in enumerate(texts)]
            one = _Round(conn, schema, column_type)
            conn.execute(sql.SQL("TRUNCATE {}").format(one.table))
            timings[column_type]["copy"].append(COPY_ROWS / one.copy(rows[:COPY_ROWS]))
            inserted = rows[COPY_ROWS : COPY_ROWS + INSERT_ROWS]
            timings[column_type]["insert"].append(INSERT_ROWS / one.insert(inserted))
            one.copy(rows[COPY_ROWS + INSERT_ROWS :])
            timings[column_type]["read"].append(READ_ROWS / one.read())
    payload_bytes = statistics.mean(len(t.encode()) for t in texts)
    results = []
    for column_type in COLUMN_TYPES:
        row = conn.execute(
            sql.SQL("SELECT avg(pg_column_size(state))::float8 FROM {}").format(
                sql.Identifier(schema, f"payload_{column_type}")
            )
        ).fetchone()
        assert row is not None
        medians = {k: statistics.median(v) for k, v in timings[column_type].items()}
        results.append(
            PayloadResult(
                system=column_type,
                copy_rows_per_s=medians["copy"],
                insert_rows_per_s=medians["insert"],
                read_rows_per_s=medians["read"],
                payload_bytes=payload_bytes,
                stored_bytes=row[0],
            )
        )
    return results


def table(results: list[PayloadResult]) -> str:
    """The results as a text table."""
    headers = [
        "suite",
        "system",
        f"COPY {COPY_ROWS:,} rows/s",
        f"{INSERT_ROWS:,} INSERTs rows/s",
        f"read {READ_ROWS:,} rows/s",
        "stored bytes/row",
    ]
    rows = [
        [
            r.suite,
            r.system,
            format_rate(r.copy_rows_per_s),
            format_rate(r.insert_rows_per_s),
            format_rate(r.read_rows_per_s),
            format_rate(r.stored_bytes),
        ]
        for r in results
    ]
    return format_table(headers, rows)


def register(benchmarks: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = benchmarks.add_parser(
        "payload", help="an event payload in a bytea, json or jsonb column: write and read"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results to FILE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    url = resolve_database_url(Settings.from_env())
    schema = f"bench_payload_{uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            results = measure(conn, schema)
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    print(table(results))
    print(
        f"\npayload: {results[0].payload_bytes:.0f} bytes of nested JSON on average; "
        f"median of {ROUNDS} rounds\nread: {READ_MODE}"
    )
    if args.json:
        write_json(args.json, [asdict(r) for r in results])
        print(f"wrote {args.json}")
    return 0

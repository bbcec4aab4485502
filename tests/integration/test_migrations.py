"""The schema is created and upgraded from versioned SQL files, idempotently."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import psycopg_pool
import pytest
from psycopg import sql

from eventkit.infrastructure.deadletters import DeadLetters
from eventkit.infrastructure.errors import MigrationError
from eventkit.infrastructure.leases import Leases
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.migrations import Migration, load_migrations, migrate
from eventkit.infrastructure.partitions import recorded_partitions
from eventkit.infrastructure.tracking import Tracking


@pytest.fixture
def empty_schema(pool: psycopg_pool.ConnectionPool) -> Iterator[str]:
    name = f"mig_{uuid4().hex[:12]}"
    yield name
    with pool.connection() as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def applied_versions(pool: psycopg_pool.ConnectionPool, schema: str) -> list[int]:
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT version FROM {} ORDER BY version").format(
                sql.Identifier(schema, "schema_migrations")
            )
        ).fetchall()
    return [r[0] for r in rows]


def test_the_shipped_files_are_numbered_in_order() -> None:
    # Unique and increasing from 1; a gap is allowed (branches developed side by side
    # reserve numbers, and migrations apply in version order whatever the gaps).
    versions = [m.version for m in load_migrations()]
    assert versions[0] == 1
    assert versions == sorted(set(versions))


def test_migrate_is_idempotent(pool: psycopg_pool.ConnectionPool, empty_schema: str) -> None:
    with pool.connection() as conn:
        first = migrate(conn, empty_schema)
        second = migrate(conn, empty_schema)
    assert [m.version for m in first] == [m.version for m in load_migrations()]
    assert second == []
    assert applied_versions(pool, empty_schema) == [m.version for m in load_migrations()]


def test_concurrent_starts_migrate_once(
    pool: psycopg_pool.ConnectionPool, empty_schema: str
) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with pool.connection() as conn:
                results.append(len(migrate(conn, empty_schema)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [0] * 5 + [len(load_migrations())]


def test_a_new_file_is_applied_on_top(pool: psycopg_pool.ConnectionPool, empty_schema: str) -> None:
    shipped = load_migrations()
    extra = Migration(shipped[-1].version + 1, "add_note", "CREATE TABLE note (body text);")
    with pool.connection() as conn:
        migrate(conn, empty_schema)
        applied = migrate(conn, empty_schema, [*shipped, extra])
    assert applied == [extra]


def test_an_edited_applied_file_is_refused(
    pool: psycopg_pool.ConnectionPool, empty_schema: str
) -> None:
    shipped = load_migrations()
    edited = [Migration(shipped[0].version, shipped[0].name, shipped[0].sql + "\n-- edit")]
    with pool.connection() as conn:
        migrate(conn, empty_schema)
        with pytest.raises(MigrationError, match="was changed after it was applied"):
            migrate(conn, empty_schema, edited + shipped[1:])


def test_a_failing_file_applies_nothing_and_names_itself(
    pool: psycopg_pool.ConnectionPool, empty_schema: str
) -> None:
    broken = [*load_migrations(), Migration(99, "broken", "CREATE TABLE nope (;")]
    with pool.connection() as conn, pytest.raises(MigrationError, match=r"0099_broken\.sql"):
        migrate(conn, empty_schema, broken)
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (empty_schema,)
        ).fetchone()
    assert row == (0,)


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


def test_a_schema_at_0007_upgrades_to_consumer_names_in_place(
    pool: psycopg_pool.ConnectionPool, empty_schema: str
) -> None:
    """0008 renames the ``projection`` columns and ``projection_workers``: rows written
    under the old names are found under the new ones, and keys still hold."""
    stream = uuid4()
    with pool.connection() as conn:
        migrate(conn, empty_schema, [m for m in load_migrations() if m.version <= 7])
        with conn.transaction():  # SET LOCAL: the pool's connection keeps its search_path
            conn.execute(
                sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(empty_schema))
            )
            conn.execute(
                "INSERT INTO tracking (projection, partition, transaction_id, notification_id)"
                " VALUES ('order_summaries', 0, 812, 4051), ('charge_payments', 1, 900, 4100)"
            )
            conn.execute(
                "INSERT INTO dead_letters (projection, originator_id, originator_version,"
                " notification_id, transaction_id, topic, reason, status, message_id)"
                " VALUES ('charge_payments', %s, 3, 4099, 899, 'Payment.Requested', 'failed',"
                " 'parked', %s)",
                (stream, uuid4()),
            )
            conn.execute(
                "INSERT INTO leases (projection, partition, owner, expires_at)"
                " VALUES ('charge_payments', 1, 'host:1', now() + interval '1 hour')"
            )
            conn.execute(
                "INSERT INTO partitioning (projection, partitions) VALUES ('charge_payments', 2)"
            )
            conn.execute(
                "INSERT INTO projection_workers (projection, partition, state, worker_id)"
                " VALUES ('charge_payments', 1, 'running', 'host:1')"
            )

        applied = migrate(conn, empty_schema)

        assert applied[0].name == "consumers"
        assert all(m.version > 7 for m in applied)
        tracking = Tracking(empty_schema)
        assert tracking.position(conn, "order_summaries") == Position(812, 4051)
        assert tracking.positions(conn, "charge_payments") == {1: Position(900, 4100)}
        [letter] = DeadLetters(empty_schema).select(conn, consumer="charge_payments")
        assert (letter.consumer, letter.originator_id, letter.topic) == (
            "charge_payments",
            stream,
            "Payment.Requested",
        )
        [lease] = Leases(empty_schema).rows(conn, ["charge_payments"])
        assert (lease.consumer, lease.partition, lease.owner) == ("charge_payments", 1, "host:1")
        assert recorded_partitions(conn, empty_schema) == {"charge_payments": 2}
        state = conn.execute(
            sql.SQL("SELECT consumer, partition, state FROM {}").format(
                sql.Identifier(empty_schema, "consumer_workers")
            )
        ).fetchall()
        assert state == [("charge_payments", 1, "running")]

        # The keys came along: a second row per key is refused or merged as before.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (consumer, partition, transaction_id, notification_id)"
                    " VALUES ('order_summaries', 0, 1, 1)"
                ).format(sql.Identifier(empty_schema, "tracking"))
            )
        tracking.advance(conn, "order_summaries", Position(812, 4051), Position(813, 4060))
        assert tracking.position(conn, "order_summaries") == Position(813, 4060)
        names = {
            r[0]
            for r in conn.execute(
                "SELECT conname FROM pg_constraint WHERE connamespace = %s::regnamespace"
                " UNION SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace",
                (empty_schema, empty_schema),
            ).fetchall()
        }
        assert not [n for n in names if "projection" in n]
        assert {"consumer_workers", "consumer_workers_pkey"} <= names

"""The completeness audit on a real PostgreSQL: complete after real followers ran, and
naming the events when a fold is removed or a batch is applied twice by hand."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg_pool
import pytest
from psycopg import sql

from eventkit.cli import main as eventkit_main
from eventkit.domain.shop.application import Shop
from eventkit.infrastructure.audit import HASH_SQL, PartitionAudit, audit
from eventkit.infrastructure.factory import mapper_for
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.app import App
from eventkit.projections.partitioning import split
from eventkit.projections.rebuild import rebuild
from tests.integration.projection_support import (
    OrderHistory,
    make_follower,
    running,
    settings_for,
    stock_up,
    wait_until_caught_up,
    workload,
)

APP = App("audited", projections=[OrderHistory])


@pytest.fixture
def shop(app_env: dict[str, str]) -> Shop:
    shop = Shop(env=app_env)
    stock_up(shop)
    return shop


@pytest.fixture(autouse=True)
def _no_poison() -> Iterator[None]:
    OrderHistory.broken = set()
    yield
    OrderHistory.broken = set()


def follow(database_url: str, schema: str, pool: psycopg_pool.ConnectionPool, **kw: Any) -> None:
    settings = settings_for(database_url, schema)
    partitions = kw.get("partitions", 1)
    followers = [
        make_follower(OrderHistory(), settings, partition=k, batch_size=25, **kw)
        for k in range(partitions)
    ]
    with running(*followers):
        wait_until_caught_up(pool, schema, OrderHistory.name)


def audited(
    pool: psycopg_pool.ConnectionPool, schema: str, partitions: int = 1
) -> list[PartitionAudit]:
    with pool.connection() as conn:
        return audit(
            conn,
            schema,
            OrderHistory.name,
            OrderHistory.topics(),
            key=OrderHistory.partition_key,
            partitions=partitions,
        )


def applied_ids(pool: psycopg_pool.ConnectionPool, schema: str) -> list[int]:
    """The ids of the projection's events, in log order (committed ones: not through the
    followers' read, which another transaction on the server may hold back a moment)."""
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT notification_id FROM {} WHERE topic = ANY(%s)"
                " ORDER BY transaction_id, notification_id"
            ).format(sql.Identifier(schema, "stored_events")),
            (OrderHistory.topics(),),
        ).fetchall()
    return [r[0] for r in rows]


def test_a_projection_that_followed_the_log_is_complete(
    shop: Shop, database_url: str, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    workload(shop, 60, seed=1)
    follow(database_url, schema, pool)
    (result,) = audited(pool, schema)
    assert result.complete, result.describe()
    assert result.expected.count == len(applied_ids(pool, schema)) > 60
    assert "complete" in result.describe()


def test_a_removed_fold_is_named_as_a_missed_event(
    shop: Shop, database_url: str, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    workload(shop, 40, seed=2)
    follow(database_url, schema, pool)
    ids = applied_ids(pool, schema)
    lost = ids[len(ids) // 2]
    with pool.connection() as conn:  # as if that event's batch had not folded it
        conn.execute(
            sql.SQL(
                "UPDATE {} SET applied_count = applied_count - 1, applied_checksum ="
                " applied_checksum - " + HASH_SQL.format(id="%s::bigint") + " WHERE consumer = %s"
            ).format(sql.Identifier(schema, "tracking")),
            (lost, OrderHistory.name),
        )
    (result,) = audited(pool, schema)
    assert not result.complete
    assert [e.notification_id for e in result.missed] == [lost]
    assert result.doubled == []
    assert f"missed: notification {lost} at " in result.describe()


def test_a_batch_replayed_by_hand_is_named_event_by_event(
    shop: Shop, database_url: str, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    workload(shop, 40, seed=3)
    follow(database_url, schema, pool)
    batch = applied_ids(pool, schema)[10:17]
    with pool.connection() as conn:  # the same 7 events applied a second time
        Tracking(schema).fold(conn, OrderHistory.name, 0, batch)
    (result,) = audited(pool, schema)
    assert [e.notification_id for e in result.doubled] == batch
    assert result.missed == []
    text = result.describe()
    assert "INCOMPLETE" in text
    assert text.count("applied twice: notification") == 7


def test_one_missed_and_another_doubled_are_both_named(
    shop: Shop, database_url: str, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    workload(shop, 30, seed=4)
    follow(database_url, schema, pool)
    ids = applied_ids(pool, schema)
    missed, doubled = ids[3], ids[-2]
    with pool.connection() as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET applied_checksum = applied_checksum - "
                + HASH_SQL.format(id="%s::bigint")
                + " + "
                + HASH_SQL.format(id="%s::bigint")
                + " WHERE consumer = %s"
            ).format(sql.Identifier(schema, "tracking")),
            (missed, doubled, OrderHistory.name),
        )
    (result,) = audited(pool, schema)
    assert [e.notification_id for e in result.missed] == [missed]
    assert [e.notification_id for e in result.doubled] == [doubled]


def test_every_partition_is_audited_apart(
    shop: Shop, database_url: str, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    workload(shop, 40, seed=5)
    follow(database_url, schema, pool, partitions=3)
    results = audited(pool, schema, partitions=3)
    assert [r.complete for r in results] == [True, True, True]
    assert sum(r.expected.count for r in results) == len(applied_ids(pool, schema))
    with pool.connection() as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET applied_count = 0, applied_checksum = 0"
                " WHERE consumer = %s AND partition = 1"
            ).format(sql.Identifier(schema, "tracking")),
            (OrderHistory.name,),
        )
    results = audited(pool, schema, partitions=3)
    assert [r.complete for r in results] == [True, False, True]
    assert len(results[1].missed) == results[1].expected.count > 0


def test_dead_letters_moves_and_rebuilds_keep_the_audit_exact(
    shop: Shop, database_url: str, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    ids = workload(shop, 5, seed=6)
    assert ids
    placed = applied_ids(pool, schema)
    recorder = PostgresEventRecorder(pool, schema)
    first = recorder.notifications([placed[0]])[0]
    OrderHistory.broken = {first.originator_id}  # parked: never applied, yet complete
    follow(database_url, schema, pool)
    assert all(r.complete for r in audited(pool, schema))

    OrderHistory.broken = set()
    workload(shop, 10, seed=7)
    with pool.connection() as conn:  # an operator moves it to the head: the fold restarts
        Tracking(schema).set(conn, OrderHistory.name, recorder.head() or Position.ORIGIN)
    workload(shop, 10, seed=8)
    follow(database_url, schema, pool)
    (moved,) = audited(pool, schema)
    assert moved.complete, moved.describe()
    assert moved.audited_from > Position.ORIGIN

    rebuild(
        OrderHistory,
        url=database_url,
        schema=schema,
        recorder=recorder,
        mapper=mapper_for(pool, schema),
        worker_id="test",
    )
    (rebuilt,) = audited(pool, schema)
    assert rebuilt.complete, rebuilt.describe()
    assert rebuilt.audited_from == Position.ORIGIN  # the rebuild applied the whole log


def test_the_audit_command_exits_1_and_names_the_event(
    shop: Shop,
    database_url: str,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workload(shop, 20, seed=9)
    follow(database_url, schema, pool)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    app = "tests.integration.test_audit:APP"
    assert eventkit_main(["--app", app, "audit", OrderHistory.name]) == 0
    assert "complete" in capsys.readouterr().out
    replayed = applied_ids(pool, schema)[:1]
    with pool.connection() as conn:
        Tracking(schema).fold(conn, OrderHistory.name, 0, replayed)
    assert eventkit_main(["--app", app, "audit", OrderHistory.name]) == 1
    out = capsys.readouterr().out
    assert f"applied twice: notification {replayed[0]} at " in out
    assert "1 partition(s) INCOMPLETE" in out


def test_a_split_restarts_each_partitions_fold_and_stays_complete(
    shop: Shop, database_url: str, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    workload(shop, 20, seed=10)
    follow(database_url, schema, pool)
    with pool.connection() as conn:
        split(conn, schema, OrderHistory.name, 1, 2)
    workload(shop, 20, seed=11)
    follow(database_url, schema, pool, partitions=2)
    results = audited(pool, schema, partitions=2)
    assert [r.complete for r in results] == [True, True], [r.describe() for r in results]
    assert all(r.audited_from > Position.ORIGIN for r in results)
    assert sum(r.expected.count for r in results) > 0

"""Partitions against a real log: every event in exactly one partition, whatever the key;
a partitioned projection's view equals the log; rebuilds and splits keep it whole."""

from __future__ import annotations

import psycopg_pool
import pytest

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import OrderLineRequest, PlaceOrder
from eventkit.infrastructure.leases import LeaseLostError, Leases
from eventkit.infrastructure.log import LoggedNotification, Position
from eventkit.infrastructure.partitions import Partition, PartitionKey
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.follower import Follower
from eventkit.projections.partitioning import RescaleError, split
from eventkit.projections.queries import Queries, ReadModelTimeoutError
from eventkit.projections.rebuild import rebuild
from tests.integration.projection_support import (
    SKUS,
    make_follower,
    running,
    settings_for,
    stock_up,
    workload,
)
from tests.integration.scale_support import Audit, caught_up, check_view, wait_for


@pytest.fixture
def shop(app_env: dict[str, str]) -> Shop:
    shop = Shop(env=app_env)
    stock_up(shop)
    return shop


@pytest.fixture
def view_settings(database_url: str, schema: str) -> Settings:
    return settings_for(database_url, schema)


def by_customer_shard(n: LoggedNotification) -> str:
    return str(n.originator_id)[-1]


@pytest.mark.parametrize("key", ["stream", "type", by_customer_shard])
def test_every_event_is_in_exactly_one_partition(
    shop: Shop, recorder: PostgresEventRecorder, key: PartitionKey
) -> None:
    workload(shop, 30, seed=1)
    topics = Audit.topics()
    whole = recorder.scan(Position.ORIGIN, 100_000, topics)
    seen: list[int] = []
    for k in range(5):
        partition = Partition(key, 5, k)
        scan = recorder.scan(Position.ORIGIN, 100_000, topics, partition)
        assert scan.last == whole.last  # every partition reads past the same log
        seen += [n.id for n in scan.notifications if partition.contains(n)]
    assert sorted(seen) == sorted(n.id for n in whole.notifications)
    if key == "type":  # order per type: all events of a type in one partition
        partitions_of: dict[str, set[int]] = {}
        for k in range(5):
            scan = recorder.scan(Position.ORIGIN, 100_000, topics, Partition(key, 5, k))
            for n in scan.notifications:
                partitions_of.setdefault(n.topic, set()).add(k)
        assert all(len(ks) == 1 for ks in partitions_of.values()), partitions_of


def test_partitioned_workers_with_a_key_function_build_the_whole_view(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    class ShardedAudit(Audit):
        partition_key = staticmethod(by_customer_shard)  # type: ignore[assignment]

    workload(shop, 20, seed=2)
    workers = [
        make_follower(ShardedAudit(), view_settings, worker_id=f"w{k}", partition=k, partitions=3)
        for k in range(3)
    ]
    with running(*workers):
        workload(shop, 20, seed=3)
        wait_for("caught up", lambda: all(w.caught_up.is_set() for w in workers))
        wait_for(
            "every partition at the head",
            lambda: caught_up_with_key(pool, view_settings.schema, workers),
        )
    check_view(pool, view_settings.schema)


def caught_up_with_key(
    pool: psycopg_pool.ConnectionPool, schema: str, workers: list[Follower]
) -> bool:
    last = PostgresEventRecorder(pool, schema).last_recorded()
    assert last is not None
    return all(w.position >= last for w in workers)


def test_a_lease_taken_by_another_worker_fences_the_old_holder(
    pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    leases = Leases(schema, ttl_s=0.2)
    with pool.connection() as conn:
        conn.execute(
            f'INSERT INTO "{schema}".partitioning (consumer, partitions) VALUES (%s, 2)',
            ("p",),
        )
        first = leases.acquire(conn, "p", 1, "first")
        assert first is not None
        assert leases.acquire(conn, "p", 1, "second") is None  # held and not expired
        with conn.transaction():
            leases.fence(conn, first, 2)
        with conn.transaction(), pytest.raises(LeaseLostError, match="now, not 4"):
            leases.fence(conn, first, 4)
        conn.execute("SELECT pg_sleep(0.3)")
        second = leases.acquire(conn, "p", 1, "second")
        assert second is not None
        assert second.generation > first.generation
        with conn.transaction(), pytest.raises(LeaseLostError, match="taken by second"):
            leases.fence(conn, first, 2)
        leases.release(conn, second)
        assert leases.acquire(conn, "p", 1, "third") is not None  # released: free at once


def test_a_split_that_is_not_a_multiple_is_refused_naming_the_rebuild(
    pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    with pool.connection() as conn:
        assert split(conn, schema, "audit", 4, 8).after == 8
        with pytest.raises(RescaleError, match="eventkit rebuild audit --partitions 12"):
            split(conn, schema, "audit", 4, 12)


def test_a_rebuild_into_3_partitions_from_8_keeps_the_view_whole(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    workload(shop, 20, seed=4)
    workers = [
        make_follower(Audit(), view_settings, worker_id=f"w{k}", partition=k, partitions=8)
        for k in range(8)
    ]
    with running(*workers):
        wait_for("8 partitions caught up", lambda: caught_up(pool, view_settings.schema))
    result = rebuild(
        Audit,
        url=workers[0].options.url,
        schema=view_settings.schema,
        recorder=workers[0].recorder,
        mapper=PydanticMapper(),
        worker_id="rebuilder",
        partitions=3,
    )
    assert result.applied > 0
    workload(shop, 10, seed=5)
    workers = [
        make_follower(Audit(), view_settings, worker_id=f"v{k}", partition=k, partitions=3)
        for k in range(3)
    ]
    with running(*workers):
        wait_for("3 partitions caught up", lambda: caught_up(pool, view_settings.schema))
    check_view(pool, view_settings.schema)


class AuditQueries(Queries):
    projection = Audit


def test_read_your_writes_waits_for_the_partition_that_holds_the_event(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    queries = AuditQueries(pool, view_settings.schema)
    workers = [
        make_follower(Audit(), view_settings, worker_id=f"w{k}", partition=k, partitions=4)
        for k in range(4)
    ]
    with running(*workers[:3]):
        placed = shop.place_order(
            PlaceOrder(customer_id="c", lines=(OrderLineRequest(sku=SKUS[0], quantity=1),))
        )
        with pytest.raises(ReadModelTimeoutError, match="'audit'"):
            queries.wait_for(placed.notification_id, timeout=1.0)  # partition 3 has no worker
    with running(*workers):
        queries.wait_for(placed.notification_id, timeout=10.0)
    with pool.connection() as conn:
        row = conn.execute(
            f'SELECT count(*) FROM "{view_settings.schema}".audit WHERE stream = %s',
            (placed.order_id,),
        ).fetchone()
    assert row == (1,)

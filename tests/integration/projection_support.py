"""Helpers for projection tests: running followers, a workload, and comparing views."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

import psycopg_pool
from eventsourcing.persistence import IntegrityError
from psycopg import sql

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import (
    CapturePayment,
    FailPayment,
    OrderLineRequest,
    PlaceOrder,
    ReceiveStock,
    RegisterStockItem,
    ShipOrder,
)
from eventkit.domain.shop.errors import DomainError
from eventkit.domain.shop.orders import Order
from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.partitions import Partition
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.tracking import Tracking
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.follower import Follower, FollowerOptions, PollPolicy, RetryPolicy
from eventkit.projections.projection import Context, Projection, Table, handles

FAST_RETRY = RetryPolicy(max_attempts=3, first_delay_s=0.01, max_delay_s=0.05)
FAST_POLL = PollPolicy(min_interval_s=0.001, max_interval_s=0.02, lease_wait_s=0.05)
SKUS = [f"SKU-{i:03d}" for i in range(8)]


def settings_for(database_url: str, schema: str) -> Settings:
    return Settings(database_url=database_url, schema=schema, pool_min_size=2, pool_max_size=40)


def make_follower(
    projection: Projection,
    settings: Settings,
    *,
    worker_id: str = "test",
    tracking_name: str | None = None,
    table_suffix: str = "",
    batch_size: int = 200,
    retry: RetryPolicy = FAST_RETRY,
    poll: PollPolicy = FAST_POLL,
    partition: int = 0,
    partitions: int = 1,
) -> Follower:
    """A follower of ``partition`` of ``projection`` with fast retries and polls, reading
    the log through the settings' shared pool."""
    pool, url = shared_pool(settings)
    options = FollowerOptions(
        url=url,
        recorder=PostgresEventRecorder(pool, settings.schema),
        worker_id=worker_id,
        batch_size=batch_size,
        retry=retry,
        poll=poll,
        notify_channel=settings.notify_channel,
    )
    applier = ProjectionApplier(
        projection, settings.schema, mapper=PydanticMapper(), table_suffix=table_suffix
    )
    key = Partition(type(projection).partition_key, partitions, partition)
    return Follower(tracking_name or projection.name, applier, key, options)


@contextmanager
def running(*followers: Follower) -> Iterator[threading.Event]:
    """Run followers in threads for the duration of the block; stop them gracefully after."""
    stop = threading.Event()
    threads = [threading.Thread(target=f.run, args=(stop,), daemon=True) for f in followers]
    for t in threads:
        t.start()
    try:
        yield stop
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive(), "a follower did not stop"


def wait_until_caught_up(
    pool: psycopg_pool.ConnectionPool, schema: str, name: str, timeout: float = 30.0
) -> Position:
    """Wait until projection ``name`` has recorded the position of the last event written
    so far in every one of its partitions.

    That position, not the readable head: an unrelated open transaction (another worker's
    batch) can hold the last events back from readers for a moment, and a projection at
    the head then has not seen them yet.
    """
    recorder = PostgresEventRecorder(pool, schema)
    deadline = time.monotonic() + timeout
    head = recorder.last_recorded() or Position.ORIGIN
    while True:
        with pool.connection() as conn:
            position = Tracking(schema).lowest(conn, name)
        if position >= head:
            return position
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} stuck at {position}, head {head}")
        time.sleep(0.01)


def dump(pool: psycopg_pool.ConnectionPool, schema: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of a view table, sorted, for comparing two views."""
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, table))
        ).fetchall()
    return sorted(rows, key=repr)


def stock_up(shop: Shop, quantity: int = 100_000) -> None:
    for sku in SKUS:
        shop.register_stock_item(
            RegisterStockItem(sku=sku, name=sku.title(), unit_price=Decimal("1.25"))
        )
        shop.receive_stock(ReceiveStock(sku=sku, quantity=quantity))


def workload(shop: Shop, orders: int, seed: int, stop: threading.Event | None = None) -> int:
    """Place, pay or fail, and ship orders at random; return how many commands ran."""
    rng = random.Random(seed)
    done = 0
    for i in range(orders):
        if stop is not None and stop.is_set():
            break
        lines = tuple(
            OrderLineRequest(sku=sku, quantity=rng.randint(1, 3))
            for sku in rng.sample(SKUS, rng.randint(1, 3))
        )
        try:
            placed = shop.place_order(PlaceOrder(customer_id=f"c{seed}-{i % 7}", lines=lines))
            done += 1
            if rng.random() < 0.8:
                shop.capture_payment(CapturePayment(payment_id=placed.payment_id))
                if rng.random() < 0.5:
                    shop.ship_order(ShipOrder(order_id=placed.order_id))
                    done += 1
            else:
                shop.fail_payment(FailPayment(payment_id=placed.payment_id, reason="declined"))
            done += 1
        except (DomainError, IntegrityError):
            pass  # rejected, or lost a race on a hot stock item too often: nothing written
    return done


class OrderHistory(Projection):
    """A test projection that fails on purpose for the orders in ``broken``."""

    name = "order_history"
    broken: ClassVar[set[UUID]] = set()
    tables = (
        Table(
            "order_history",
            "CREATE TABLE {table} (order_id uuid, version bigint, kind text,"
            " PRIMARY KEY (order_id, version))",
        ),
    )

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        self._record(event, context, "placed")

    @handles
    def paid(self, event: Order.Paid, context: Context) -> None:
        self._record(event, context, "paid")

    @handles
    def shipped(self, event: Order.Shipped, context: Context) -> None:
        self._record(event, context, "shipped")

    def _record(self, event: Order.Event, context: Context, kind: str) -> None:
        if event.originator_id in self.broken:
            raise RuntimeError(f"order {event.originator_id} is poison")
        # Versions must arrive in order, with none missing: the view checks it.
        previous = context.execute(
            "SELECT coalesce(max(version), 0) FROM {order_history} WHERE order_id = %s",
            (event.originator_id,),
        ).fetchone()
        assert previous is not None
        if kind != "placed" and previous[0] >= event.originator_version:
            raise AssertionError(f"order {event.originator_id} applied twice")
        context.execute(
            "INSERT INTO {order_history} (order_id, version, kind) VALUES (%s, %s, %s)",
            (event.originator_id, event.originator_version, kind),
        )


def history(pool: psycopg_pool.ConnectionPool, schema: str, order_id: UUID) -> list[str]:
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT kind FROM {} WHERE order_id = %s ORDER BY version").format(
                sql.Identifier(schema, "order_history")
            ),
            (order_id,),
        ).fetchall()
    return [r[0] for r in rows]


def tables_of(projections: Sequence[type[Projection]]) -> list[str]:
    return [t.name for p in projections for t in p.tables]

"""Real worker processes: graceful SIGTERM, and kill -9 at random points under load."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import psycopg_pool
import pytest
from psycopg import sql

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import OrderLineRequest, PlaceOrder
from eventkit.domain.shop.orders import OrderStatus
from eventkit.infrastructure.broker import message_id
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.shop import OrderMails, app
from eventkit.shop.gateway import FakeGateway
from tests.integration.projection_support import (
    SKUS,
    dump,
    make_follower,
    running,
    settings_for,
    stock_up,
    tables_of,
    wait_until_caught_up,
    workload,
)
from tests.integration.reaction_support import count

ROOT = Path(__file__).resolve().parents[2]
ALL = list(app.projections)


def start_workers(settings: Settings) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "EVENTKIT_SCHEMA": settings.schema,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eventkit.cli",
            "workers",
            "--projections-only",
            "--batch-size",
            "50",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def shop(app_env: dict[str, str]) -> Shop:
    shop = Shop(env=app_env)
    stock_up(shop)
    return shop


def test_sigterm_finishes_the_batch_records_the_position_and_exits_0(
    shop: Shop, database_url: str, schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    settings = settings_for(database_url, schema)
    workload(shop, 20, seed=1)
    process = start_workers(settings)
    try:
        for p in ALL:
            wait_until_caught_up(pool, schema, p.name)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    assert b"finishing the current batches" in err


def test_kill_9_at_random_points_loses_and_doubles_nothing(
    shop: Shop, database_url: str, schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    """Workers are killed with SIGKILL mid-load and restarted; views equal a replay."""
    settings = settings_for(database_url, schema)
    rng = random.Random(2026)
    stop_writers = threading.Event()
    writers = [
        threading.Thread(target=workload, args=(shop, 100_000, seed, stop_writers))
        for seed in range(2)
    ]
    for t in writers:
        t.start()
    try:
        for _ in range(5):
            process = start_workers(settings)
            time.sleep(rng.uniform(0.3, 1.5))
            process.kill()
            process.communicate(timeout=10)
    finally:
        stop_writers.set()
        for t in writers:
            t.join()
    process = start_workers(settings)
    try:
        for p in ALL:
            wait_until_caught_up(pool, schema, p.name, timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0
    assert len(dump(pool, schema, "order_summaries")) > 20

    for p in ALL:
        worker = make_follower(
            p(), settings, tracking_name=f"{p.name}#replay", table_suffix="__replay"
        )
        with running(worker):
            wait_until_caught_up(pool, schema, worker.name, timeout=60)
        for table in tables_of([p]):
            assert dump(pool, schema, table) == dump(pool, schema, table + "__replay"), table


def start_reaction_workers(settings: Settings, gateway_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "EVENTKIT_SCHEMA": settings.schema,
        "PAYMENT_GATEWAY_URL": gateway_url,
    }
    env.pop("BROKER_URL", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eventkit.cli",
            "workers",
            "--reactions-only",
            "--batch-size",
            "20",
            "--heartbeat-ttl",
            "2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def place_orders(shop: Shop, placed: list[UUID], stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        quantity = rng.randint(1, 4)  # over 4.00 (4 x 1.25) the gateway declines
        placed.append(
            shop.place_order(
                PlaceOrder(
                    customer_id=f"k{seed}",
                    lines=(OrderLineRequest(sku=rng.choice(SKUS), quantity=quantity),),
                )
            ).order_id
        )
        time.sleep(0.01)


def test_kill_9_of_reaction_workers_loses_no_reaction_and_repeats_none_through_the_ledger(
    shop: Shop, database_url: str, schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    """Reaction workers are killed mid-load and restarted: every order completes its
    payment process, each gets exactly one mail (written through the ledger), and the
    gateway sees one idempotency key per payment (any repeated call carries it)."""
    settings = settings_for(database_url, schema)
    rng = random.Random(4242)
    placed: list[UUID] = []
    stop_writers = threading.Event()
    writer = threading.Thread(target=place_orders, args=(shop, placed, stop_writers, 7))
    with pool.connection() as conn:  # mail every order of the test, not only later ones
        Tracking(schema).set(conn, OrderMails.name, Position.ORIGIN)
    with FakeGateway(decline_over=Decimal("4.00")) as gateway:
        writer.start()
        try:
            for _ in range(4):
                process = start_reaction_workers(settings, gateway.url)
                time.sleep(rng.uniform(0.8, 2.5))
                process.kill()
                process.communicate(timeout=10)
        finally:
            stop_writers.set()
            writer.join()
        process = start_reaction_workers(settings, gateway.url)
        try:
            deadline = time.monotonic() + 90
            while count(pool, schema, "order_mails") < len(placed):
                assert time.monotonic() < deadline, (
                    f"{count(pool, schema, 'order_mails')} mails for {len(placed)} orders"
                )
                time.sleep(0.2)
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()[-2000:]
        with pool.connection() as conn:
            mails = conn.execute(
                sql.SQL("SELECT order_id, count(*) FROM {} GROUP BY order_id").format(
                    sql.Identifier(schema, "order_mails")
                )
            ).fetchall()
        assert dict(mails) == dict.fromkeys(placed, 1)
        statuses = {shop.get_order(o).status for o in placed}
        assert statuses <= {OrderStatus.SHIPPED, OrderStatus.CANCELLED}
        assert OrderStatus.SHIPPED in statuses
        assert OrderStatus.CANCELLED in statuses
        keys = gateway.keys_per_payment()
        assert len(keys) == len(placed)
        for payment_id, payment_keys in keys.items():
            assert payment_keys == {str(message_id("charge_payments", UUID(payment_id), 1))}, (
                payment_id
            )
        assert count(pool, schema, "dead_letters") == 0
        assert len(placed) > 20

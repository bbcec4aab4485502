"""Reactions through a real RabbitMQ (marked ``rabbitmq``) and a real Redis (``redis``),
each run where one is reachable.

``EVENTKIT_TEST_RABBITMQ_URL`` names it (default ``amqp://guest:guest@127.0.0.1:5672/``);
without a reachable server these tests are skipped. The restart test also needs
``rabbitmqctl`` and the right to run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from uuid import UUID

import pika
import psycopg_pool
import pytest
from dramatiq.common import dq_name, xq_name
from psycopg import sql

from eventkit.domain.shop.application import Shop
from eventkit.infrastructure.broker import queue_name, reachable
from eventkit.infrastructure.settings import Settings
from tests.integration.projection_support import settings_for, stock_up
from tests.integration.reaction_support import (
    Audit,
    Effects,
    count,
    make_runtime,
    place,
    running_reactions,
    wait_for,
)

URL = os.environ.get("EVENTKIT_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.skipif(not reachable(URL, 5672), reason=f"no RabbitMQ reachable at {URL}"),
]


@pytest.fixture
def shop(app_env: dict[str, str]) -> Shop:
    shop = Shop(app_env)
    stock_up(shop)
    return shop


@pytest.fixture
def rabbit_settings(database_url: str, schema: str) -> Iterator[Settings]:
    yield settings_for(database_url, schema)
    # The test's queues are named after its schema: delete them.
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        channel = connection.channel()
        for reaction in ("effects", "audit"):
            q = queue_name(schema, reaction)
            for name in (q, dq_name(q), xq_name(q), xq_name(dq_name(q))):
                channel.queue_delete(name)
    finally:
        connection.close()


def once_each(pool: psycopg_pool.ConnectionPool, schema: str, table: str) -> dict[UUID, int]:
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT order_id, count(*) FROM {} GROUP BY order_id").format(
                sql.Identifier(schema, table)
            )
        ).fetchall()
    return dict(rows)


def test_reactions_run_once_each_through_rabbitmq(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, rabbit_settings: Settings
) -> None:
    orders = place(shop, 30, "a", "SKU-003")
    runtime = make_runtime([Effects(), Audit()], rabbit_settings, broker_url=URL)
    with running_reactions(runtime):
        orders += place(shop, 30, "b", "SKU-003")
        wait_for(
            lambda: count(pool, schema, "effects") >= 60 and count(pool, schema, "audit") >= 60,
            "both reactions through RabbitMQ",
        )
        wait_for(lambda: count(pool, schema, "reaction_outbox") == 0, "the outbox to drain")
    assert runtime.relay is not None
    assert runtime.relay.relayed == 120  # one message per (event, reaction), none twice
    assert once_each(pool, schema, "effects") == dict.fromkeys(orders, 1)
    assert once_each(pool, schema, "audit") == dict.fromkeys(orders, 1)


@pytest.mark.slow
@pytest.mark.disruptive  # it restarts the machine's RabbitMQ: only when asked (.ci/run asks)
@pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None, reason="rabbitmqctl is needed to restart RabbitMQ"
)
def test_a_rabbitmq_restart_under_load_loses_nothing(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, rabbit_settings: Settings
) -> None:
    probe = subprocess.run(["rabbitmqctl", "status"], check=False, capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"rabbitmqctl cannot control the server: {probe.stderr.decode()[:200]}")
    runtime = make_runtime([Effects()], rabbit_settings, broker_url=URL)
    placed: list[UUID] = []
    stop_writer = threading.Event()

    def writer() -> None:
        i = 0
        while not stop_writer.is_set():
            placed.extend(place(shop, 1, f"w{i}-", "SKU-003"))
            i += 1
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    with running_reactions(runtime):
        thread.start()
        try:
            time.sleep(1.0)
            subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
            time.sleep(2.0)
            subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
            time.sleep(1.0)
        finally:
            stop_writer.set()
            thread.join()
        wait_for(
            lambda: count(pool, schema, "effects") >= len(placed),
            f"a reaction for each of {len(placed)} orders after the restart",
            timeout=90,
        )
    assert once_each(pool, schema, "effects") == dict.fromkeys(placed, 1)
    assert len(placed) > 50


REDIS_URL = os.environ.get("EVENTKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.mark.redis
@pytest.mark.skipif(not reachable(REDIS_URL, 6379), reason=f"no Redis reachable at {REDIS_URL}")
def test_reactions_run_once_each_through_redis(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, database_url: str
) -> None:
    settings = settings_for(database_url, schema)
    orders = place(shop, 30, "r", "SKU-003")
    runtime = make_runtime([Effects()], settings, broker_url=REDIS_URL)
    try:
        with running_reactions(runtime):
            wait_for(lambda: count(pool, schema, "effects") >= 30, "the reaction through Redis")
            wait_for(lambda: count(pool, schema, "reaction_outbox") == 0, "the outbox to drain")
    finally:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"*{schema}*"):
            client.delete(key)
    assert once_each(pool, schema, "effects") == dict.fromkeys(orders, 1)

"""Real worker processes: graceful SIGTERM, and kill -9 at random points under load."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg_pool
import pytest

from domain.application import Shop
from infrastructure.settings import Settings
from projections.shop import PROJECTIONS
from tests.integration.projection_support import (
    dump,
    make_worker,
    running,
    settings_for,
    stock_up,
    tables_of,
    wait_until_caught_up,
    workload,
)

ROOT = Path(__file__).resolve().parents[2]
ALL = list(PROJECTIONS.values())


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
            "scripts.cli",
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
        worker = make_worker(
            p(), settings, tracking_name=f"{p.name}#replay", table_suffix="__replay"
        )
        with running(worker):
            wait_until_caught_up(pool, schema, worker.name, timeout=60)
        for table in tables_of([p]):
            assert dump(pool, schema, table) == dump(pool, schema, table + "__replay"), table

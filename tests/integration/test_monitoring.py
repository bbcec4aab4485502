"""Metrics, health checks, and a real Prometheus scraping a running worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg_pool
import pytest

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import OrderLineRequest, PlaceOrder
from eventkit.projections.monitoring import Monitor, MonitoringServer
from eventkit.projections.shop import OrderSummaries
from tests.integration.projection_support import (
    OrderHistory,
    make_follower,
    running,
    settings_for,
    stock_up,
    wait_until_caught_up,
    workload,
)
from tests.integration.worker_process import Series, free_port, get, matching, series

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shop(app_env: dict[str, str]) -> Shop:
    shop = Shop(app_env)
    stock_up(shop)
    return shop


def value(found: Series, metric: str, /, **labels: str) -> float:
    """The sum of the samples of ``metric`` whose labels include ``labels``."""
    matched = matching(found, metric, **labels)
    assert matched, f"no sample {metric}{labels}"
    return sum(matched.values())


def test_metrics_and_health_of_running_workers(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, database_url: str
) -> None:
    settings = settings_for(database_url, schema)
    summaries = make_follower(OrderSummaries(), settings)
    history = make_follower(OrderHistory(), settings)
    monitor = Monitor(
        pool,
        schema,
        projections=[OrderSummaries, OrderHistory],
        loops=[summaries.beat, history.beat],
        max_lag_s=30,
    )
    server = MonitoringServer(monitor, 0, host="127.0.0.1").start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with running(summaries, history):
            workload(shop, 30, seed=5)
            for name in ("order_summaries", "order_history"):
                wait_until_caught_up(pool, schema, name)
            assert monitor.refresh().ok
            status, text = get(base + "/metrics")
            assert status == 200
            found = series(text)
            placed = value(
                found,
                "eventkit_events_processed_total",
                kind="projection",
                consumer="order_summaries",
                event_type="Order.Placed",
            )
            assert placed >= 20
            assert value(found, "eventkit_lag_events", consumer="order_summaries") == 0
            assert value(found, "eventkit_lease_owned", consumer="order_history") == 1
            latency = "eventkit_commit_to_processed_seconds_count"
            assert value(found, latency, consumer="order_history") > 0
            assert value(found, "eventkit_events_appended_total") > 0
            assert value(found, "eventkit_pool_connections", state="in_use") >= 0
            assert get(base + "/healthz") == (200, "ok\n")
            assert get(base + "/readyz") == (200, "ok\n")

        # A poison order, placed while the workers are stopped: its projection retries it,
        # then parks it as a dead letter.
        poison = shop.place_order(
            PlaceOrder(customer_id="poison", lines=(OrderLineRequest(sku="SKU-001", quantity=1),))
        ).order_id
        OrderHistory.broken.add(poison)
        with running(summaries, history):
            deadline = time.monotonic() + 20
            while True:
                monitor.refresh()
                found = series(get(base + "/metrics")[1])
                if value(found, "eventkit_dead_letters_open", consumer="order_history") >= 1:
                    break
                assert time.monotonic() < deadline, "no dead letter counted"
                time.sleep(0.1)
            assert get(base + "/readyz")[0] == 200  # parked: the projection goes on
        assert value(found, "eventkit_retries_total", consumer="order_history") >= 1
        assert value(found, "eventkit_dead_letters_parked_total", consumer="order_history") >= 1
        assert value(found, "eventkit_errors_total", error_class="RuntimeError") >= 1
    finally:
        OrderHistory.broken.clear()
        server.stop()
    # The workers stopped: their loops no longer turn.
    stalled = Monitor(pool, schema, loops=[summaries.beat], stall_s=0.0)
    assert not stalled.health().ok
    assert "loop stalled" in stalled.health().text()


def test_the_readiness_check_turns_red_for_a_failing_projection(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, database_url: str
) -> None:
    settings = settings_for(database_url, schema)
    worker = make_follower(OrderHistory(), settings)
    monitor = Monitor(pool, schema, projections=[OrderHistory], loops=[worker.beat], max_lag_s=0.5)
    with running(worker):
        workload(shop, 5, seed=9)
        wait_until_caught_up(pool, schema, "order_history")
        assert monitor.refresh().ok
        with pool.connection() as conn:
            conn.execute(
                f'UPDATE "{schema}".consumer_workers SET state = %s, detail = %s '
                "WHERE consumer = %s",
                ("failing", "retrying stream X v3", "order_history"),
            )
        check = monitor.refresh()
    assert not check.ok
    assert "projection order_history is failing: retrying stream X v3" in check.problems


@pytest.mark.prometheus
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary")
def test_a_real_prometheus_scrapes_a_running_worker(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, database_url: str, tmp_path: Path
) -> None:
    workload(shop, 20, seed=3)
    metrics_port, prometheus_port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "EVENTKIT_SCHEMA": schema}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eventkit.cli",
            "--log-format",
            "json",
            "workers",
            "--projections-only",
            "--metrics-port",
            str(metrics_port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {ROOT / 'docs/monitoring/prometheus/alerts.yml'}\n"
        "scrape_configs:\n  - job_name: eventkit\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{prometheus_port}/api/v1/query?query="
    try:
        deadline = time.monotonic() + 60
        lag: list[dict[str, object]] = []
        throughput: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                lag = _query(api, 'eventkit_lag_events{consumer="order_summaries"}')
                throughput = _query(
                    api, 'sum by (consumer) (eventkit_events_processed_total{kind="projection"})'
                )
            except (urllib.error.URLError, ConnectionError):
                continue  # Prometheus is starting
            if lag and float(lag[0]["value"][1]) == 0 and len(throughput) >= 3:  # type: ignore[index]
                break  # caught up, as Prometheus sees it
        assert lag, "Prometheus has no lag series for order_summaries"
        assert float(lag[0]["value"][1]) == 0  # type: ignore[index]
        by_name = {r["metric"]["consumer"]: float(r["value"][1]) for r in throughput}  # type: ignore[index]
        assert by_name["order_summaries"] > 0
        assert set(by_name) >= {"order_summaries", "stock_levels", "revenue_by_day"}
        up = _query(api, 'up{job="eventkit"}')
        assert float(up[0]["value"][1]) == 1  # type: ignore[index]
        print("prometheus:", json.dumps({"lag": lag, "throughput": throughput}))
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    took = [x for x in lines if "took the lease" in x["message"]]
    assert {x["consumer"] for x in took} == {"order_summaries", "stock_levels", "revenue_by_day"}
    assert {x["kind"] for x in took} == {"projection"}
    assert all("position" in x and x["partition"] == 0 for x in took)


def _query(api: str, query: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(api + urllib.parse.quote(query), timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    result: list[dict[str, object]] = body["data"]["result"]
    return result

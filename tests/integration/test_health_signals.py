"""Signals operators act on, asked of real worker processes over HTTP: series of handed-over
partitions go, a standby is not ready, /healthz never depends on the database while
/readyz names it, /metrics binds where the log says (issue 14, points 2 and 4)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import urllib.error
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import psycopg
import psycopg_pool
import pytest
from psycopg import sql

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.orders import Order
from eventkit.infrastructure.leases import Leases
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.follower import RECONNECT_MAX_DELAY_S
from eventkit.projections.group import plan_for
from eventkit.projections.projection import handles
from eventkit.projections.reaction import Reaction, ReactionContext
from eventkit.projections.shop import ChargePayments, StockLevels, app
from eventkit.projections.status import partition_status
from tests.integration.projection_support import (
    running,
    settings_for,
    stock_up,
    wait_until_caught_up,
    workload,
)
from tests.integration.reaction_support import (
    count,
    make_runtime,
    place,
    running_reactions,
)
from tests.integration.worker_process import (
    OutageProxy,
    Process,
    free_port,
    get,
    matching,
    wait_for,
)

NAMES = [p.name for p in app.projections]
MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring" / "prometheus"
HEARTBEAT = "eventkit_loop_heartbeat_timestamp_seconds"


@pytest.fixture
def shop(app_env: dict[str, str]) -> Shop:
    shop = Shop(app_env)
    stock_up(shop)
    return shop


def workers(
    worker_id: str, *extra: str, database_url: str, schema: str, names: Sequence[str] = ()
) -> Process:
    return Process(
        [
            "workers",
            *names,
            "--projections-only",
            "--id",
            worker_id,
            "--heartbeat",
            "0.5",
            "--lease-ttl",
            "2",
            "--metrics-port",
            str(port := free_port()),
            *extra,
        ],
        database_url=database_url,
        schema=schema,
        port=port,
    )


def exporter_process(*, database_url: str, schema: str) -> Process:
    port = free_port()
    return Process(
        ["exporter", "--port", str(port), "--interval", "0.5"],
        database_url=database_url,
        schema=schema,
        port=port,
    )


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        p.stop()


def owned(pool: psycopg_pool.ConnectionPool, schema: str, owner: str) -> set[tuple[str, int]]:
    with pool.connection() as conn:
        return {
            (r.consumer, r.partition)
            for r in Leases(schema).rows(conn, NAMES)
            if r.owner == owner and r.expires_in_s > 0
        }


def heartbeats(p: Process) -> set[tuple[str, int]]:
    return {
        (dict(labels)["consumer"], int(dict(labels)["partition"]))
        for labels in matching(p.metrics(), HEARTBEAT)
    }


def test_handed_over_partitions_lose_their_series_and_a_standby_is_not_ready(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    processes: list[Process],
) -> None:
    workload(shop, 5, seed=21)
    every = {(p.name, k) for p in app.projections for k in range(p.partitions)}
    # A second member's id to which the group's plan gives some of the partitions.
    other = next(
        f"b{i}"
        for i in range(100)
        if any(
            plan_for(p.name, p.partitions, ["a", f"b{i}"], f"b{i}").mine for p in app.projections
        )
    )
    a = workers("a", database_url=database_url, schema=schema)
    processes.append(a)
    wait_for(lambda: a.answers() and a.get("/readyz")[0] == 200, "worker a ready")
    wait_for(lambda: owned(pool, schema, "a") == every, "worker a owning every partition")
    assert heartbeats(a) == every
    for name in NAMES:
        wait_until_caught_up(pool, schema, name)

    # Scrapes aborted before their answer (a Prometheus scrape timeout) leave nothing but
    # JSON in the log.
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", a.port)) as scraper:
            scraper.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            scraper.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert a.get("/healthz") == (200, "ok\n")

    # The same id again: this process runs nothing, so it is alive but not ready.
    standby = workers("a", database_url=database_url, schema=schema)
    processes.append(standby)
    wait_for(standby.answers, "the standby's metrics server")
    _, text = wait_for(
        lambda: (r := standby.get("/readyz"))[0] == 503 and "standby" in r[1] and r,
        "the standby's /readyz to say standby",
    )
    assert "worker id 'a' is in use" in text, text
    assert standby.get("/healthz") == (200, "ok\n")
    assert not matching(standby.metrics(), HEARTBEAT)  # it works on no partition
    assert standby.stop() == 0
    processes.remove(standby)
    standby_log = standby.log()

    # A second member: worker a hands it its share, and stops exporting their series.
    b = workers(other, database_url=database_url, schema=schema)
    processes.append(b)
    handed = {
        (p.name, k)
        for p in app.projections
        for k in plan_for(p.name, p.partitions, ["a", other], other).mine
    }
    kept = every - handed
    wait_for(lambda: owned(pool, schema, other) == handed, "worker b owning its share")
    wait_for(lambda: owned(pool, schema, "a") == kept, "worker a owning the rest")
    wait_for(lambda: b.get("/readyz")[0] == 200, "worker b ready")
    # a removed the series before it gave the lease back, so b's lease proves it.
    left = heartbeats(a)
    assert not left & handed, f"worker a still exports heartbeats of {left & handed}"
    assert left == kept
    lease_series = matching(a.metrics(), "eventkit_lease_owned")
    assert {(dict(k)["consumer"], int(dict(k)["partition"])) for k in lease_series} == kept
    assert a.get("/healthz") == (200, "ok\n")

    # b took over partitions a had processed: its lines say from where, read first.
    with pool.connection() as conn:
        positions = {
            (name, k): str(v)
            for name in NAMES
            for k, v in Tracking(schema).positions(conn, name).items()
        }
    took = [x for x in b.log() if "took the lease" in x["message"]]
    assert {(x["consumer"], x["partition"]) for x in took} == handed
    for x in took:
        assert x["position"] == positions[x["consumer"], x["partition"]] != "0/0", x
        assert x["message"].endswith(f"at position {x['position']}"), x
    # Every line is JSON and names its worker; lines about errors name their class.
    assert all(line.startswith("{") for line in a.lines), [
        line for line in a.lines if not line.startswith("{")
    ][:5]
    a_lines = a.log()
    assert {x["worker_id"] for x in a_lines} == {"a"}
    assert {x["worker_id"] for x in b.log()} == {other}
    duplicate = [x for x in standby_log if x["level"] == "error"]
    assert duplicate, standby_log
    assert {x["error_class"] for x in duplicate} == {"DuplicateWorkerError"}


def test_healthz_ignores_the_database_and_readyz_names_it(
    pool: psycopg_pool.ConnectionPool, schema: str, database_url: str, processes: list[Process]
) -> None:
    proxy = OutageProxy(database_url)
    try:
        w = workers("w", "--stall-after", "3", database_url=proxy.url, schema=schema)
        processes.append(w)
        wait_for(lambda: w.answers() and w.get("/readyz") == (200, "ok\n"), "the worker ready")

        # It binds where its log says: 127.0.0.1 by default, not every interface.
        said = [x["message"] for x in w.log() if x["message"].startswith("metrics at")]
        assert said == [
            f"metrics at {w.base}/metrics; health at {w.base}/healthz and {w.base}/readyz"
        ]
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", w.port)):
            pass

        # A peer frozen in a transaction holds the lease rows: the worker's statements wait
        # on the lock, longer than --stall-after, and its loops are still alive.
        with psycopg.connect(database_url) as holder:
            holder.execute(
                sql.SQL("SELECT * FROM {} FOR UPDATE").format(sql.Identifier(schema, "leases"))
            )
            wait_for(
                lambda: _waiting_on_a_lock(pool, "eventkit:w", 4.0),
                "the worker to wait on the lock for 4 s",
            )
            assert w.get("/healthz") == (200, "ok\n")
            holder.rollback()

        # The database goes away: /healthz stays green, /readyz names the database.
        proxy.down()

        def outage_seen() -> bool:
            assert w.get("/healthz") == (200, "ok\n")
            status, text = w.get("/readyz")
            # The coordinator's reconnect backoff reached its cap (after 3.1 s) and waited it
            # out twice more: the outage has lasted over twice --stall-after. (Raw lines: no
            # parse of the whole log at every poll.)
            capped = f"reconnecting in {RECONNECT_MAX_DELAY_S:.1f} s"
            long = sum("coordinator" in line and capped in line for line in list(w.lines)) >= 3
            # The database figures are withdrawn, not frozen at their last values.
            m = w.metrics()
            gone = m[("eventkit_database_up", ())] == 0 and not matching(m, "eventkit_lag_events")
            return status == 503 and "database" in text and long and gone

        wait_for(outage_seen, "/readyz to name the database after a few seconds of outage")
        text = w.get("/readyz")[1]
        assert f"at 127.0.0.1:{proxy.port}" in text, text

        proxy.up()
        wait_for(lambda: w.get("/readyz") == (200, "ok\n"), "the worker ready again")
        assert w.metrics()[("eventkit_database_up", ())] == 1
        assert w.stop() == 0
        processes.remove(w)
        w.log()  # every line of its log is JSON
    finally:
        proxy.up()  # a worker stops at once only with its database back (its reads wait)
        for p in processes:
            p.stop()
        processes.clear()
        proxy.close()


def _waiting_on_a_lock(pool: psycopg_pool.ConnectionPool, application: str, for_s: float) -> bool:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND wait_event_type = 'Lock' AND state = 'active'"
            " AND clock_timestamp() - query_start > make_interval(secs => %s)",
            (application, for_s),
        ).fetchone()
    return row is not None and row[0] > 0


def test_every_declared_consumer_has_lag_series_even_with_its_only_worker_frozen(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    processes: list[Process],
) -> None:
    workload(shop, 10, seed=14)
    # Messages of charge_payments queued by its follower, executed by nobody: a backlog.
    runtime = make_runtime(
        [ChargePayments(shop, cast(Any, None))], settings_for(database_url, schema), follow=False
    )
    queuer = runtime.consumers[0].make(0, 1)
    with running(queuer):
        queued = wait_for(
            lambda: count(pool, schema, "dramatiq_queue", "WHERE state = 'queued'"),
            "charge_payments' messages queued",
        )
    w = workers("only", database_url=database_url, schema=schema, names=["order_summaries"])
    exporter = exporter_process(database_url=database_url, schema=schema)
    processes += [w, exporter]
    wait_for(lambda: w.answers() and w.get("/readyz") == (200, "ok\n"), "the worker ready")
    wait_for(lambda: exporter.answers() and exporter.get("/readyz") == (200, "ok\n"), "exporter")

    with pool.connection() as conn:
        behind = partition_status(conn, schema, StockLevels).rows[0].lag_events
    assert behind > 0
    for p in (w, exporter):  # stock_levels: declared, run by no process, 'behind' events behind
        found = wait_for(
            lambda p=p: (
                (m := p.metrics())
                and matching(m, "eventkit_lag_events", consumer="order_summaries")
                and m
            ),
            "lag series",
        )
        assert matching(found, "eventkit_lag_events", consumer="stock_levels") == {
            (("consumer", "stock_levels"), ("kind", "projection"), ("partition", "0")): behind
        }
        assert set(
            matching(found, "eventkit_consumer_running", consumer="stock_levels").values()
        ) == {0}
        assert matching(found, "eventkit_reaction_queue_messages", state="queued") == {
            (("consumer", r.name), ("state", "queued")): queued if r is ChargePayments else 0
            for r in app.reactions
        }
        oldest = matching(found, "eventkit_reaction_oldest_message_age_seconds")
        assert oldest[(("consumer", "charge_payments"),)] > 0
        assert found[("eventkit_database_up", ())] == 1
        # Counters start at 0 for what the worker runs (a rate exists from the start).
    assert matching(w.metrics(), "eventkit_events_processed_total", consumer="order_summaries")

    # The only worker of order_summaries freezes: its endpoint stops answering, and the
    # exporter still reports the lag growing and the consumer not running.
    wait_for(
        lambda: (
            matching(exporter.metrics(), "eventkit_consumer_running", consumer="order_summaries")
            == {(("consumer", "order_summaries"), ("kind", "projection"), ("partition", "0")): 1}
        ),
        "order_summaries running",
    )
    w.signal(signal.SIGSTOP)
    try:
        workload(shop, 3, seed=15)
        wait_for(
            lambda: (
                (m := exporter.metrics())
                and sum(matching(m, "eventkit_lag_events", consumer="order_summaries").values()) > 0
                and set(
                    matching(m, "eventkit_consumer_running", consumer="order_summaries").values()
                )
                == {0}
            ),
            "the exporter to report the frozen worker's consumer behind and not running",
        )
    finally:
        w.signal(signal.SIGCONT)


class GatewayCalls(Reaction):
    """Calls a payment gateway that is down: every try fails the same way."""

    name = "gateway_calls"
    start_from = "origin"  # events are written before the runtime starts
    max_attempts = 3
    min_backoff_ms = 10
    max_backoff_ms = 50

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        raise ConnectionRefusedError("payment gateway at 127.0.0.1:9 refused the connection")


def test_a_gateway_outage_writes_at_most_one_line_per_failed_try(
    shop: Shop,
    database_url: str,
    schema: str,
    pool: psycopg_pool.ConnectionPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each failed try is logged at most once, by eventkit with its reason (not a second
    time by dramatiq's Retries middleware), and identical failures within 10 s once."""
    caplog.set_level(logging.INFO)
    orders = 10
    place(shop, orders, tag="outage")
    runtime = make_runtime([GatewayCalls()], settings_for(database_url, schema))
    with running_reactions(runtime):
        wait_for(
            lambda: count(pool, schema, "dead_letters") == orders, "every message parked", 90.0
        )
    retried = orders * (GatewayCalls.max_attempts - 1)  # failed tries followed by another
    lines = [
        r for r in caplog.records if r.name.startswith("eventkit") and "trying again" in r.message
    ]
    assert 1 <= len(lines) < retried, len(lines)
    assert "ConnectionRefusedError: payment gateway" in lines[0].message
    assert {getattr(r, "error_class", None) for r in lines} == {"ConnectionRefusedError"}
    dramatiq_retries = [r for r in caplog.records if r.getMessage().startswith("Retrying message")]
    assert not dramatiq_retries, [r.getMessage() for r in dramatiq_retries]
    parked = [r for r in caplog.records if r.levelno == logging.ERROR and "parked" in r.message]
    assert len(parked) == orders  # every dead letter is logged


@pytest.mark.prometheus
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary")
def test_a_real_prometheus_alerts_when_the_only_worker_freezes(
    shop: Shop, schema: str, database_url: str, processes: list[Process], tmp_path: Path
) -> None:
    """The shipped rules (with for: 0s) on a real Prometheus scraping the only worker of
    order_summaries and an exporter: SIGSTOP the worker and write events, and the
    worker-down and not-running alerts fire, from the exporter's figures."""
    workload(shop, 3, seed=31)
    w = workers("frozen", database_url=database_url, schema=schema, names=["order_summaries"])
    exporter = exporter_process(database_url=database_url, schema=schema)
    processes += [w, exporter]
    rules = re.sub(r"for: \d+m", "for: 0s", (MONITORING / "alerts.yml").read_text())
    (tmp_path / "alerts.yml").write_text(rules)
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files:\n  - alerts.yml\n"
        "scrape_configs:\n  - job_name: eventkit\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{w.port}', '127.0.0.1:{exporter.port}']\n"
    )
    api = f"http://127.0.0.1:{(prometheus_port := free_port())}/api/v1/"
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def firing() -> set[tuple[str, str]]:
        try:
            status, text = get(api + "alerts")
        except (urllib.error.URLError, ConnectionError):
            return set()  # Prometheus is starting
        assert status == 200, text
        return {
            (
                a["labels"]["alertname"],
                a["labels"].get("consumer") or a["labels"].get("instance", ""),
            )
            for a in json.loads(text)["data"]["alerts"]
            if a["state"] == "firing"
        }

    try:
        wait_for(lambda: w.answers() and w.get("/readyz") == (200, "ok\n"), "the worker ready")
        wait_for(
            lambda: (
                (r := get(api + "query?query=" + quote('sum(up{job="eventkit"})')))[0] == 200
                and json.loads(r[1])["data"]["result"]
                and json.loads(r[1])["data"]["result"][0]["value"][1] == "2"
            ),
            "Prometheus scraping both targets",
        )
        # Caught up and running as Prometheus sees it (with for: 0s, the start itself fires).
        wait_for(
            lambda: (
                not {
                    a
                    for a in firing()
                    if a[0] in ("EventkitWorkerDown", "EventkitConsumerNotRunning")
                    and a[1] in ("order_summaries", f"127.0.0.1:{w.port}")
                }
            ),
            "no alert about the running worker",
        )
        w.signal(signal.SIGSTOP)
        workload(shop, 3, seed=32)
        wait_for(
            lambda: (
                {
                    ("EventkitWorkerDown", f"127.0.0.1:{w.port}"),
                    ("EventkitConsumerNotRunning", "order_summaries"),
                }
                <= firing()
            ),
            "the worker-down and not-running alerts to fire",
        )
    finally:
        w.signal(signal.SIGCONT)
        prometheus.terminate()
        prometheus.wait(timeout=30)


def test_the_exporter_only_reads(pool: psycopg_pool.ConnectionPool, database_url: str) -> None:
    """Pointed at a schema that does not exist, the exporter says what to run and exits;
    it creates nothing (a reader role is enough for it)."""
    missing = "signals_never_migrated"
    done = subprocess.run(
        [sys.executable, "-m", "eventkit.cli", "exporter", "--port", str(free_port())],
        env={**os.environ, "DATABASE_URL": database_url, "EVENTKIT_SCHEMA": missing},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0, done.stderr
    assert "eventkit db migrate" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    with pool.connection() as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (missing,))
        assert found.fetchone() is None

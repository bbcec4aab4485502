"""Database outages under a writer and `eventkit workers` (issue 17, point 1), on an
embedded server of the test's own that it stops and starts (never the shared one).

Writers fail within their bound (EVENTKIT_WRITE_TIMEOUT) with DatabaseUnavailableError
while the server is away; once it is back, the writer, the projections and the reactions
resume within a bounded time however long it was away; afterwards every view equals a
replay and every order got exactly one mail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from uuid import UUID, uuid4

import psycopg
import psycopg_pool
import pytest
from psycopg import sql

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import OrderLineRequest, PlaceOrder
from eventkit.infrastructure.embedded import SYSTEM_USER, EmbeddedPostgres, _bin_dir, _is_root, _run
from eventkit.infrastructure.errors import DatabaseUnavailableError
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.shop import OrderMails, app
from eventkit.shop.gateway import FakeGateway
from tests.integration.projection_support import (
    SKUS,
    settings_for,
    stock_up,
    wait_until_caught_up,
)
from tests.integration.test_projections import replay_equals_live

ROOT = Path(__file__).resolve().parents[2]
#: A writer's bound in these tests (the default, stated): EVENTKIT_WRITE_TIMEOUT.
WRITE_TIMEOUT_S = 5.0
#: How soon after the server's return the writer, a projection and the reactions' whole
#: chain (charge, ship, mail) must have handled a new order. Before: 12 s after a 20 s
#: outage, 103 s after a 150 s one.
RECOVERY_S = 20.0


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    # A folder of its own rather than pytest's: another pytest session on the machine
    # removes old pytest folders, and this server runs for minutes.
    with tempfile.TemporaryDirectory(prefix="eventkit-outages-") as folder:
        server = EmbeddedPostgres(Path(folder) / "home")
        server.start()
        try:
            yield server
        finally:
            server.stop()


def take_down(server: EmbeddedPostgres, mode: str) -> None:
    """``pg_ctl stop -m MODE``: fast ends every session; immediate is a crash."""
    result = _run(
        [str(_bin_dir() / "pg_ctl"), "-D", str(server.pgdata), "-m", mode, "-w", "stop"],
        SYSTEM_USER if _is_root() else None,
    )
    assert result.returncode == 0, result.stderr


@dataclass
class Writer:
    """Places orders until stopped, through an outage: what succeeded, and how long each
    failing call took."""

    shop: Shop
    placed: list[UUID] = field(default_factory=list)
    failures: list[tuple[str, float]] = field(default_factory=list)
    #: The longest call, failed or not.
    slowest: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                placed = self.shop.place_order(
                    PlaceOrder(
                        customer_id=f"w{n}",
                        lines=(OrderLineRequest(sku=SKUS[n % len(SKUS)], quantity=1),),
                    )
                )
            except Exception as e:  # every kind is recorded, and checked
                self.failures.append((type(e).__name__, time.monotonic() - started))
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.stop.wait(0.05)
                continue
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.placed.append(placed.order_id)
            self.stop.wait(0.01)


def query(url: str, statement: sql.Composable, params: tuple[object, ...] = ()) -> list[tuple]:
    """One query on a connection of its own (the server comes and goes)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(statement, params).fetchall()


def handled(url: str, schema: str, order: UUID) -> tuple[bool, bool]:
    """Whether the projection has the order, and whether its mail was written."""
    found = query(
        url,
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE order_id = %s),"
            " EXISTS (SELECT 1 FROM {} WHERE order_id = %s)"
        ).format(sql.Identifier(schema, "order_summaries"), sql.Identifier(schema, "order_mails")),
        (order, order),
    )
    return found[0][0], found[0][1]


def recovery(shop: Shop, url: str, schema: str, back_at: float) -> tuple[float, float, float]:
    """Seconds from the server's return until a new order is written, in the projection,
    and mailed (through every reaction of the shop's payment process)."""
    while True:
        try:
            order = shop.place_order(
                PlaceOrder(customer_id="probe", lines=(OrderLineRequest(sku=SKUS[0], quantity=1),))
            ).order_id
            break
        except DatabaseUnavailableError:
            assert time.monotonic() - back_at < RECOVERY_S, "the writer did not recover"
    written = time.monotonic() - back_at
    projected = mailed = 0.0
    while not (projected and mailed):
        try:
            in_view, in_mails = handled(url, schema, order)
        except psycopg.Error:  # the server still starting, or the workers' tables
            in_view = in_mails = False
        now = time.monotonic() - back_at
        projected = projected or (now if in_view else 0.0)
        mailed = mailed or (now if in_mails else 0.0)
        assert now < RECOVERY_S, (
            f"not recovered {now:.1f} s after the server's return: written after "
            f"{written:.1f} s, in the projection: {in_view}, mailed: {in_mails}"
        )
        time.sleep(0.05)
    return written, projected, mailed


def start_workers(
    url: str, schema: str, gateway_url: str, log: Path, settings: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "EVENTKIT_SCHEMA": schema,
        "PAYMENT_GATEWAY_URL": gateway_url,
        **(settings or {}),
    }
    env.pop("BROKER_URL", None)
    with log.open("wb") as out:  # a file: a pipe nobody reads fills up and blocks it
        return subprocess.Popen(
            [sys.executable, "-m", "eventkit.cli", "workers", "--heartbeat-ttl", "2"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def run_outages(
    server: EmbeddedPostgres, tmp_path: Path, outages: list[tuple[str, float]]
) -> list[tuple[str, float, tuple[float, float, float]]]:
    """Run a writer and `eventkit workers` on ``server`` through each outage (stop mode,
    seconds down); check what the issue asks and return the recovery times measured."""
    url = server.start()
    schema = f"outage_{uuid4().hex[:12]}"
    env = {
        "PERSISTENCE_MODULE": "eventkit.infrastructure.factory",
        "DATABASE_URL": url,
        "EVENTKIT_SCHEMA": schema,
        "EVENTKIT_WRITE_TIMEOUT": str(WRITE_TIMEOUT_S),
    }
    shop = Shop(env)
    stock_up(shop)
    settings = settings_for(url, schema)
    pool = psycopg_pool.ConnectionPool(
        url,
        min_size=1,
        max_size=4,
        kwargs={"autocommit": True},
        check=psycopg_pool.ConnectionPool.check_connection,
    )
    measured = []
    with pool, FakeGateway(decline_over=Decimal("4.00")) as gateway:
        with pool.connection() as conn:  # mail every order of the test
            Tracking(schema).set(conn, OrderMails.name, Position.ORIGIN)
        workers = start_workers(url, schema, gateway.url, tmp_path / "workers.log")
        writer = Writer(shop)
        thread = threading.Thread(target=writer.run)
        try:
            thread.start()
            try:
                # Every worker is running (its first order mailed) before the first outage.
                while not writer.placed:
                    assert thread.is_alive(), "the writer stopped"
                    time.sleep(0.05)
                wait_for_mails(url, schema, writer.placed[:1], timeout=60)
                for mode, down_s in outages:
                    take_down(server, mode)
                    time.sleep(down_s)  # the outage itself
                    server.start()
                    back_at = time.monotonic()
                    measured.append((mode, down_s, recovery(shop, url, schema, back_at)))
            finally:
                writer.stop.set()
                thread.join(60)
            wait_for_mails(url, schema, writer.placed)
            settled(url, schema, pool)
        finally:  # the workers stop whatever failed
            server.start()
            stop_workers(workers)
        log = (tmp_path / "workers.log").read_text(errors="replace")
        assert workers.returncode == 0, log[-3000:]
        exactly_once(url, schema, pool, settings, writer)
    return measured


def stop_workers(workers: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and kill -9 if it does not stop within a minute."""
    workers.send_signal(signal.SIGTERM)
    try:
        workers.wait(60)
    except subprocess.TimeoutExpired:
        workers.kill()
        workers.wait(10)
        raise


def exactly_once(
    url: str,
    schema: str,
    pool: psycopg_pool.ConnectionPool,
    settings: Settings,
    writer: Writer,
) -> None:
    """What must hold after the outages: the writer's calls, the views, the mails."""
    # No call of the writer waited past its bound; those the outage outlasted failed
    # with the one clear error.
    assert writer.slowest < WRITE_TIMEOUT_S + 3, f"a call took {writer.slowest:.1f} s"
    kinds = {kind for kind, _ in writer.failures}
    assert kinds <= {"DatabaseUnavailableError"}, writer.failures
    assert writer.failures, "no call of the writer met the outage"
    replay_equals_live(pool, settings, list(app.projections))
    mails = query(
        url,
        sql.SQL("SELECT order_id, count(*) FROM {} GROUP BY order_id").format(
            sql.Identifier(schema, "order_mails")
        ),
    )
    orders = query(
        url,
        sql.SQL("SELECT order_id FROM {}").format(sql.Identifier(schema, "order_summaries")),
    )
    # Exactly one mail per order in the log (an order whose command failed with the
    # outage may have been written all the same: the log is the truth).
    assert dict(mails) == dict.fromkeys((o for (o,) in orders), 1)
    assert set(writer.placed) <= {o for (o,) in orders}
    assert query(
        url, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "dead_letters"))
    ) == [(0,)]


def settled(url: str, schema: str, pool: psycopg_pool.ConnectionPool, timeout: float = 60) -> None:
    """Wait until no reaction message is left and every consumer has caught up with the
    log (the reactions' commands append events after the last mail is written)."""
    queue = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "dramatiq_queue"))
    deadline = time.monotonic() + timeout
    while query(url, queue) != [(0,)]:
        assert time.monotonic() < deadline, "reaction messages left"
        time.sleep(0.1)
    for consumer in app.consumers():
        wait_until_caught_up(pool, schema, consumer.name, timeout=timeout)


def wait_for_mails(url: str, schema: str, placed: list[UUID], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            mailed = query(
                url,
                sql.SQL("SELECT count(DISTINCT order_id) FROM {} WHERE order_id = ANY(%s)").format(
                    sql.Identifier(schema, "order_mails")
                ),
                (placed,),
            )[0][0]
        except psycopg.errors.UndefinedTable:  # the workers have not created it yet
            mailed = 0
        if mailed == len(placed):
            return
        assert time.monotonic() < deadline, f"{mailed} of {len(placed)} orders mailed"
        time.sleep(0.2)


def test_restarts_fast_and_immediate_under_a_writer_and_workers(
    server: EmbeddedPostgres, tmp_path: Path
) -> None:
    # The second outage outlasts a writer's bound: its calls meet the error.
    measured = run_outages(server, tmp_path, [("fast", 1.0), ("immediate", WRITE_TIMEOUT_S + 2)])
    for mode, _, (written, projected, mailed) in measured:
        print(
            f"restart -m {mode}: writer {written:.1f} s, projection {projected:.1f} s, "
            f"mail {mailed:.1f} s after the server's return"
        )


@pytest.mark.slow
def test_a_two_minute_outage_is_recovered_from_within_seconds(
    server: EmbeddedPostgres, tmp_path: Path
) -> None:
    [(_, _, (written, projected, mailed))] = run_outages(server, tmp_path, [("fast", 120.0)])
    print(
        f"120 s outage: writer {written:.1f} s, projection {projected:.1f} s, "
        f"mail {mailed:.1f} s after the server's return"
    )


def held_by(url: str) -> list[tuple]:
    """The server's client connections by application name, and their last statement."""
    return query(
        url,
        sql.SQL(
            "SELECT application_name, left(query, 60), count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        ),
    )


def test_a_worker_process_holds_the_connections_status_gives(
    server: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Issue 17 point 7: `eventkit status` (worker_members.connections) and docs/scaling.md
    said 25 where a worker process held 34: the PostgreSQL broker's own pool was not
    counted. With every pool opened to its size at start, pg_stat_activity shows exactly
    the figure. On this test's own server, where only the workers connect."""
    url = server.start()
    schema = f"conns_{uuid4().hex[:12]}"
    members = sql.SQL("SELECT connections FROM {}").format(sql.Identifier(schema, "worker_members"))
    # Connections opened before (this process's own pools, from the tests before) are
    # not the workers'.
    before = [pid for (pid,) in query(url, sql.SQL("SELECT pid FROM pg_stat_activity"))]
    with FakeGateway() as gateway:
        env_pool = {"EVENTKIT_POOL_MIN_SIZE": "3", "EVENTKIT_POOL_MAX_SIZE": "3"}
        workers = start_workers(url, schema, gateway.url, tmp_path / "workers.log", env_pool)
        try:
            figure = None
            seen: list[int] = []
            deadline = time.monotonic() + 60
            while True:
                if figure is None:
                    with contextlib.suppress(psycopg.errors.UndefinedTable, IndexError):
                        figure = query(url, members)[0][0]
                [(held,)] = query(
                    url,
                    sql.SQL(
                        "SELECT count(*) FROM pg_stat_activity WHERE backend_type ="
                        " 'client backend' AND pid <> pg_backend_pid() AND pid <> ALL(%s)"
                    ),
                    (before,),
                )
                seen.append(held)
                if figure is not None:
                    assert max(seen) <= figure, (
                        f"held {max(seen)}, status says {figure}: {held_by(url)}"
                    )
                    if held == figure:
                        break
                assert time.monotonic() < deadline, f"held {seen[-5:]}, status says {figure}"
                time.sleep(0.1)
        finally:
            stop_workers(workers)
    reactions = len(app.reactions)
    consumers = len(app.projections) + reactions
    # The figure docs/scaling.md gives: 1 + consumers + pool + (2 x reactions + 2).
    assert figure == 1 + consumers + 3 + 2 * reactions + 2

"""Followers that read the log from a hot standby (``EVENTKIT_READ_URL``, ``eventkit
workers --read-url``) while they write their views and positions on the primary.

One real standby per module, started from the test server with ``pg_basebackup -R``
(:mod:`eventkit.testing.standby`) and stopped at the end; skipped, with the reason, where
the machine or the server does not allow one (a ``DATABASE_URL`` server without a
``replication`` entry in ``pg_hba.conf``, no binaries of the server's version). The
embedded server allows one, so these tests run in CI: there a standby that cannot start
fails them rather than skip them.

The interleavings are those of test_gap_safety.py: writers on the primary commit out of id
order while a reader of the standby follows the log; nothing is skipped, nothing doubled,
order per stream kept. The standby's snapshot is built from the transactions the primary
had running at the replayed point, so the log's horizon holds there as on the primary.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from uuid import UUID, uuid4

import psycopg
import psycopg_pool
import pytest
from prometheus_client import REGISTRY
from psycopg import sql

import eventkit
import eventkit.infrastructure.recorder as recorder_module
from eventkit.cli import main
from eventkit.domain.shop.application import Shop
from eventkit.infrastructure.database import TRANSIENT_ERRORS
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.projections.shop.order_summaries import OrderSummaries, OrderSummaryQueries
from eventkit.testing.standby import Standby, StandbyUnavailableError, start_standby
from tests.integration.projection_support import stock_up, wait_until_caught_up
from tests.integration.reaction_support import count, place, wait_for
from tests.integration.test_gap_safety import (
    Follower,
    append_in,
    check_concurrent_writers,
    check_interleaving,
    event,
    interleavings,
    open_transaction,
)
from tests.integration.test_runner import EveryGreeting

pytestmark = pytest.mark.standby


@pytest.fixture(scope="module")
def standby(database_url: str) -> Iterator[Standby]:
    try:
        server = start_standby(database_url)
    except StandbyUnavailableError as e:
        if Settings.from_env().database_url is None:
            # The embedded server (CI's) trusts replication on its socket and brings its
            # own binaries: these tests must run there, not pass as skipped.
            pytest.fail(f"no hot standby of the embedded server: {e}")
        pytest.skip(f"no hot standby on this machine: {e}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def standby_pool(standby: Standby) -> Iterator[psycopg_pool.ConnectionPool]:
    with psycopg_pool.ConnectionPool(
        standby.url, min_size=1, max_size=8, kwargs={"autocommit": True}, open=True
    ) as pool:
        yield pool


@pytest.fixture
def replica(
    standby: Standby, standby_pool: psycopg_pool.ConnectionPool, schema: str
) -> PostgresEventRecorder:
    """A recorder that reads the test's schema on the standby (once the standby has it)."""
    standby.replayed()
    return PostgresEventRecorder(standby_pool, schema)


def test_the_standby_is_a_standby(replica: PostgresEventRecorder) -> None:
    lag = replica.replay_lag()
    assert lag is not None, "the standby's server is not in recovery"
    assert lag >= 0.0


def test_a_later_commit_waits_for_an_earlier_open_transaction_on_the_standby(
    recorder: PostgresEventRecorder,
    replica: PostgresEventRecorder,
    standby: Standby,
    database_url: str,
) -> None:
    follower = Follower(replica)
    early, late = uuid4(), uuid4()
    with open_transaction(database_url) as slow:
        [low_id] = append_in(slow, recorder, [event(early, 1)])
        [high_id] = recorder.insert_events([event(late, 1)])
        assert low_id < high_id
        standby.replayed()  # the later event is on the standby, committed
        # The earlier transaction is still open on the primary: the standby's reader must
        # not move past it.
        assert follower.poll() == []
        slow.commit()
    follower.drain(expect=2)
    assert [n.id for n in follower.seen] == [low_id, high_id]


def test_a_transaction_that_drew_its_id_later_but_committed_first_on_the_standby(
    recorder: PostgresEventRecorder,
    replica: PostgresEventRecorder,
    standby: Standby,
    database_url: str,
) -> None:
    follower = Follower(replica, limit=1)
    a, b = uuid4(), uuid4()
    with open_transaction(database_url) as first, open_transaction(database_url) as second:
        [a1] = append_in(first, recorder, [event(a, 1)])
        [b1] = append_in(second, recorder, [event(b, 1)])
        second.commit()
        [a2] = append_in(first, recorder, [event(a, 2)])
        assert a1 < b1 < a2
        standby.replayed()
        assert follower.poll() == []
        first.commit()
    follower.drain(expect=3)
    assert [n.id for n in follower.seen] == [a1, a2, b1]


def test_a_rolled_back_transaction_leaves_a_gap_that_the_standby_does_not_wait_for(
    recorder: PostgresEventRecorder,
    replica: PostgresEventRecorder,
    standby: Standby,
    database_url: str,
) -> None:
    follower = Follower(replica)
    with open_transaction(database_url) as doomed:
        append_in(doomed, recorder, [event(uuid4(), 1)])
        [kept] = recorder.insert_events([event(uuid4(), 1)])
        standby.replayed()
        assert follower.poll() == []
        doomed.rollback()
    follower.drain(expect=1)
    assert [n.id for n in follower.seen] == [kept]


def test_an_unguarded_reader_of_the_standby_would_skip(
    recorder: PostgresEventRecorder,
    standby_pool: psycopg_pool.ConnectionPool,
    standby: Standby,
    schema: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scenario above races on the standby too: without the horizon, the early event
    is lost, so the tests of this module can fail."""
    monkeypatch.setattr(recorder_module, "_SETTLED", "TRUE")
    standby.replayed()
    unguarded = PostgresEventRecorder(standby_pool, schema)
    follower = Follower(unguarded)
    with open_transaction(database_url) as slow:
        [low_id] = append_in(slow, recorder, [event(uuid4(), 1)])
        [high_id] = recorder.insert_events([event(uuid4(), 1)])
        standby.replayed()
        assert [n.id for n in follower.poll()] == [high_id]
        slow.commit()
    standby.replayed()
    follower.drain(expect=1)
    assert low_id not in [n.id for n in follower.seen]


@interleavings(max_examples=30)
def test_random_interleavings_read_on_the_standby_are_seen_exactly_once_in_stream_order(
    recorder: PostgresEventRecorder,
    replica: PostgresEventRecorder,
    standby: Standby,
    database_url: str,
    steps: list[tuple[int, str, int]],
) -> None:
    """test_gap_safety's random interleavings, each read on the standby once it has
    replayed everything the primary wrote so far (a read of a lagging standby would only
    see less)."""
    check_interleaving(steps, recorder, replica, database_url, before_read=standby.replayed)


def test_concurrent_writers_on_the_primary_and_a_follower_tailing_the_standby(
    recorder: PostgresEventRecorder, replica: PostgresEventRecorder, standby: Standby
) -> None:
    """Eight writers append single events and batches on the primary for a while; a
    follower tails the standby, which replays them as they commit."""
    check_concurrent_writers(recorder, replica, before_drain=standby.replayed)


# -- workers reading the standby ----------------------------------------------------------


def _settings(database_url: str, schema: str, standby: Standby) -> Settings:
    return Settings(
        database_url=database_url,
        schema=schema,
        pool_min_size=2,
        pool_max_size=20,
        read_url=standby.url,
    )


def summarised(pool: psycopg_pool.ConnectionPool, schema: str) -> list[UUID]:
    """The orders in the order_summaries view, sorted."""
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT order_id FROM {}").format(sql.Identifier(schema, "order_summaries"))
        ).fetchall()
    return sorted(r[0] for r in rows)


def _standby_backends(standby: Standby) -> list[int]:
    """The standby's sessions of eventkit's read pool (the followers' scans)."""
    with psycopg.connect(standby.url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'eventkit-read'"
        ).fetchall()
    return [r[0] for r in rows]


def assert_read_on_the_standby(standby: Standby, schema: str) -> None:
    """The log of ``schema`` was scanned on the standby (its own statistics, which a
    backend reports within about a second)."""
    deadline = time.monotonic() + 30.0
    with psycopg.connect(standby.url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_all_tables"
                " WHERE schemaname = %s AND relname = 'stored_events'",
                (schema,),
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            assert time.monotonic() < deadline, f"nothing read {schema}'s log on the standby"
            time.sleep(0.1)
            conn.execute("SELECT pg_stat_clear_snapshot()")


def test_workers_reading_the_standby_write_the_view_on_the_primary_and_reads_see_their_writes(
    app_env: dict[str, str],
    pool: psycopg_pool.ConnectionPool,
    database_url: str,
    schema: str,
    standby: Standby,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`eventkit workers --read-url`'s process: the followers scan the standby (its read
    pool's sessions are there), the view and the position are on the primary, a query
    that waits for its write (read-your-writes, on the primary) sees it, and `eventkit
    status` says that the consumer reads a standby, with its replay lag."""
    shop = Shop(app_env)
    stock_up(shop)
    standby.replayed()
    app = eventkit.App("standby", projections=[OrderSummaries])
    settings = _settings(database_url, schema, standby)
    queries = OrderSummaryQueries(pool, schema)
    with eventkit.Workers(app, settings=settings, worker_id="reads-standby"):
        for _ in range(5):
            [order_id] = place(shop, 1)
            with pool.connection() as conn:
                row = conn.execute(
                    sql.SQL("SELECT max(notification_id) FROM {} WHERE originator_id = %s").format(
                        sql.Identifier(schema, "stored_events")
                    ),
                    (order_id,),
                ).fetchone()
            assert row is not None
            summary = queries.get(order_id, wait_for=row[0], timeout=30.0)
            assert summary is not None, "the view did not have the order its wait was for"
        assert_read_on_the_standby(standby, schema)
        lag = REGISTRY.get_sample_value(
            "eventkit_standby_replay_lag_seconds",
            {"kind": "projection", "consumer": "order_summaries", "partition": "0"},
        )
        assert lag is not None, "the worker exported no replay lag"
        assert lag >= 0.0
        # status: the consumer's state says it reads a standby, with the replay lag
        monkeypatch.setenv("DATABASE_URL", database_url)
        monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
        deadline = time.monotonic() + 30.0
        while True:
            assert main(["status", "--json"]) == 0
            rows = json.loads(capsys.readouterr().out)["projections"]
            detail = next((r["detail"] for r in rows if r["consumer"] == "order_summaries"), None)
            if detail is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert detail is not None
        assert detail.startswith("reads the log from a standby, replay lag ")
        assert main(["status"]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if "order_summaries" in x)
        assert "running (reads the log from a standby, replay lag " in line


def test_lost_standby_connections_are_retried_and_park_nothing(
    app_env: dict[str, str],
    pool: psycopg_pool.ConnectionPool,
    database_url: str,
    schema: str,
    standby: Standby,
) -> None:
    """The standby's sessions of the followers' reads are terminated again and again
    while they catch up: every event is applied once, none is parked."""
    shop = Shop(app_env)
    stock_up(shop)
    orders = place(shop, 60)
    standby.replayed()
    app = eventkit.App("standby", projections=[OrderSummaries])
    settings = _settings(database_url, schema, standby)

    def applied() -> int:
        with pool.connection() as conn:
            made = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.order_summaries",)
            ).fetchone()
            if made is None or not made[0]:
                return 0  # the worker has not made the view's table yet
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "order_summaries"))
            ).fetchone()
        return 0 if row is None else int(row[0])

    def cut() -> bool:
        """Terminate the standby's sessions of the followers' reads."""
        with psycopg.connect(standby.url, autocommit=True) as conn:
            done = [
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
                for pid in _standby_backends(standby)
            ]
        return any(row and row[0] for row in done)

    cut_at: list[int] = []  # the view's rows when a cut was made
    with eventkit.Workers(app, settings=settings, worker_id="reads-standby", batch_size=10):
        deadline = time.monotonic() + 120.0  # only a stop for a hang
        while (done := applied()) < len(orders):
            assert time.monotonic() < deadline, (
                f"the view is stuck at {done} of {len(orders)} orders; reads cut at {cut_at}"
            )
            # Cut again once the worker has made progress since the last cut, 4 times.
            if len(cut_at) < 4 and (not cut_at or done > cut_at[-1]) and cut():
                cut_at.append(done)
            time.sleep(0.005)
        wait_until_caught_up(pool, schema, "order_summaries", timeout=60.0)
    killed = len(cut_at)
    assert killed > 0, "no read of the standby was cut off"
    with pool.connection() as conn:
        dead = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "dead_letters"))
        ).fetchone()
    assert dead is not None
    assert dead[0] == 0
    assert summarised(pool, schema) == sorted(orders)


def test_a_read_the_standby_cancels_for_recovery_is_a_transient_error(
    standby: Standby, schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    """A standby that must replay a change its reader's lock conflicts with cancels the
    read once max_standby_streaming_delay has passed ("canceling statement due to conflict
    with recovery"): SQLSTATE 40001, which eventkit's reads retry like a lost connection
    (TRANSIENT_ERRORS), never a handler's failure that would park an event."""
    standby.configure(max_standby_streaming_delay="0")
    table = sql.Identifier(schema, f"conflict_{uuid4().hex[:8]}")
    errors: list[BaseException] = []
    try:
        with pool.connection() as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (n int)").format(table))
            conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(table))
        standby.replayed()

        def read() -> None:
            # A long read of the table on the standby (60 s: only a stop for a hang).
            with psycopg.connect(standby.url, autocommit=True) as reader:
                reader.execute("SET application_name = 'conflicting_read'")
                try:
                    reader.execute(
                        sql.SQL("SELECT pg_sleep(60), n FROM {}").format(table)
                    ).fetchall()
                except psycopg.Error as e:
                    errors.append(e)

        thread = threading.Thread(target=read)
        thread.start()
        deadline = time.monotonic() + 30.0
        with psycopg.connect(standby.url, autocommit=True) as watcher:
            while not watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'conflicting_read'"
                " AND state = 'active'"
            ).fetchall():
                assert time.monotonic() < deadline, "the standby's read did not start"
                time.sleep(0.01)
        with pool.connection() as conn, conn.transaction():
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        thread.join(timeout=90)
        assert not thread.is_alive()
    finally:
        standby.configure(max_standby_streaming_delay="30s")
        with pool.connection() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    [error] = errors
    assert isinstance(error, psycopg.Error)
    assert error.sqlstate == "40001", error
    assert "conflict with recovery" in str(error)
    assert isinstance(error, TRANSIENT_ERRORS)


def test_a_rebuild_reads_its_catch_up_from_the_standby(
    app_env: dict[str, str],
    pool: psycopg_pool.ConnectionPool,
    database_url: str,
    schema: str,
    standby: Standby,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`eventkit rebuild NAME --read-url`: the copy is filled from the standby, the rest
    and the swap's last stretch from the primary; the swapped-in view has every order."""
    shop = Shop(app_env)
    stock_up(shop)
    orders = place(shop, 12)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    assert main(["rebuild", "order_summaries", "--read-url", standby.url]) == 0
    assert "rebuilt order_summaries" in capsys.readouterr().out
    assert_read_on_the_standby(standby, schema)
    assert summarised(pool, schema) == sorted(orders)


def test_a_reaction_whose_follower_reads_the_standby_runs_once_per_event(
    app_env: dict[str, str],
    pool: psycopg_pool.ConnectionPool,
    database_url: str,
    schema: str,
    standby: Standby,
) -> None:
    """A reaction's follower reads the standby; its messages, ledger and handler's writes
    are the primary's: each placed order is greeted once."""
    shop = Shop(app_env)
    stock_up(shop)
    orders = place(shop, 6)
    standby.replayed()
    app = eventkit.App("standby", reactions=[EveryGreeting])
    settings = _settings(database_url, schema, standby)
    with eventkit.Workers(app, settings=settings, worker_id="reads-standby", threads=2):
        wait_for(lambda: count(pool, schema, "greetings") == len(orders), "the greetings")
        assert_read_on_the_standby(standby, schema)
    assert count(pool, schema, "greetings") == len(orders)

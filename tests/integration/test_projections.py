"""Projection workers on a real PostgreSQL: exactly once, dead letters, rebuilds, RYW."""

from __future__ import annotations

import threading
import time

import psycopg
import psycopg_pool
import pytest
from eventsourcing.persistence import StoredEvent
from prometheus_client import REGISTRY
from psycopg import sql

from eventkit.cli import main
from eventkit.domain.names import EVENT_TYPES
from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import CapturePayment, OrderLineRequest, PlaceOrder, ShipOrder
from eventkit.domain.shop.orders import Order
from eventkit.infrastructure.deadletters import DeadLetters
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.follower import Follower, PollPolicy, connect
from eventkit.projections.queries import ReadModelNotReadyError, ReadModelTimeoutError
from eventkit.projections.rebuild import rebuild
from eventkit.projections.shop import (
    OrderSummaries,
    OrderSummaryQueries,
    RevenueByDay,
    RevenueQueries,
    StockLevelQueries,
    StockLevels,
    app,
)
from eventkit.projections.status import consumer_status
from tests.integration.projection_support import (
    SKUS,
    OrderHistory,
    dump,
    history,
    make_follower,
    running,
    settings_for,
    stock_up,
    tables_of,
    wait_until_caught_up,
    workload,
)

ALL = list(app.projections)


@pytest.fixture
def view_settings(database_url: str, schema: str) -> Settings:
    return settings_for(database_url, schema)


@pytest.fixture
def shop(app_env: dict[str, str]) -> Shop:
    shop = Shop(env=app_env)
    stock_up(shop)
    return shop


@pytest.fixture(autouse=True)
def _heal_order_history() -> None:
    OrderHistory.broken.clear()


def replay_equals_live(
    pool: psycopg_pool.ConnectionPool, view_settings: Settings, projections: list[type]
) -> None:
    """Replay each projection from zero into copies of its tables; compare with the live view."""
    for projection in projections:
        worker = make_follower(
            projection(),
            view_settings,
            tracking_name=f"{projection.name}#replay",
            table_suffix="__replay",
        )
        with running(worker):
            wait_until_caught_up(pool, view_settings.schema, worker.name)
        for table in tables_of([projection]):
            live = dump(pool, view_settings.schema, table)
            replayed = dump(pool, view_settings.schema, table + "__replay")
            if live != replayed:
                # Say what differs, and which dead letters the workers parked.
                with pool.connection() as conn:
                    letters = DeadLetters(view_settings.schema).select(
                        conn, statuses=("parked", "retry_requested", "retried", "discarded")
                    )
                missing = sorted(set(replayed) - set(live), key=repr)
                extra = sorted(set(live) - set(replayed), key=repr)
                raise AssertionError(
                    f"{table}: live view differs from a replay; missing from live: {missing}; "
                    f"only in live: {extra}; dead letters: "
                    f"{[d.summary() for d in letters] or 'none'}"
                )


def test_a_query_waits_for_the_command_it_follows(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    orders = OrderSummaryQueries(pool, view_settings.schema)
    with running(*(make_follower(p(), view_settings) for p in ALL)):
        placed = shop.place_order(
            PlaceOrder(customer_id="ada", lines=(OrderLineRequest(sku=SKUS[0], quantity=2),))
        )
        summary = orders.get(placed.order_id, wait_for=placed.notification_id)
        assert summary is not None
        assert summary.status == "placed"
        paid = shop.capture_payment(CapturePayment(payment_id=placed.payment_id))
        summary = orders.get(placed.order_id, wait_for=paid.notification_id)
        assert summary is not None
        assert summary.status == "paid"
        stock = StockLevelQueries(pool, view_settings.schema).get(
            SKUS[0], wait_for=paid.notification_id
        )
        assert stock is not None
        assert stock.reserved == 2
        revenue = RevenueQueries(pool, view_settings.schema)
        revenue.wait_for(paid.notification_id)
        assert revenue.total() == {"EUR": summary.total}


def test_waiting_without_workers_times_out_naming_the_projection(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    placed = shop.place_order(
        PlaceOrder(customer_id="ada", lines=(OrderLineRequest(sku=SKUS[0], quantity=1),))
    )
    with pytest.raises(ReadModelTimeoutError, match="'order_summaries' did not process"):
        OrderSummaryQueries(pool, view_settings.schema).get(
            placed.order_id, wait_for=placed.notification_id, timeout=0.2
        )


def test_views_after_a_busy_workload_equal_a_replay_from_zero(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    writers_stop = threading.Event()
    with running(*(make_follower(p(), view_settings) for p in ALL)):
        writers = [
            threading.Thread(target=workload, args=(shop, 60, seed, writers_stop))
            for seed in range(4)
        ]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        for p in ALL:
            wait_until_caught_up(pool, view_settings.schema, p.name)
    counts = OrderSummaryQueries(pool, view_settings.schema).count_by_status()
    assert sum(counts.values()) > 100
    replay_equals_live(pool, view_settings, ALL)


def test_projections_on_the_same_event_type_advance_independently(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    """OrderSummaries, RevenueByDay and a failing OrderHistory all consume Order.Placed."""
    poison = shop.place_order(
        PlaceOrder(customer_id="p", lines=(OrderLineRequest(sku=SKUS[1], quantity=1),))
    )
    OrderHistory.broken.add(poison.order_id)
    with running(
        make_follower(OrderSummaries(), view_settings),
        make_follower(RevenueByDay(), view_settings),
        make_follower(OrderHistory(), view_settings),
    ):
        workload(shop, 20, seed=7)
        for name in ("order_summaries", "revenue_by_day", "order_history"):
            wait_until_caught_up(pool, view_settings.schema, name)
    summaries = dump(pool, view_settings.schema, "order_summaries")
    assert len(summaries) == 21
    with pool.connection() as conn:
        parked = DeadLetters(view_settings.schema).select(conn)
    assert [(d.consumer, d.originator_id) for d in parked] == [("order_history", poison.order_id)]


@pytest.mark.parametrize("partitions", [1, 3])
def test_a_poison_event_is_parked_with_its_stream_behind_it_then_retried_in_order(
    shop: Shop,
    view_settings: Settings,
    pool: psycopg_pool.ConnectionPool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    partitions: int,
) -> None:
    poison = shop.place_order(
        PlaceOrder(customer_id="p", lines=(OrderLineRequest(sku=SKUS[2], quantity=1),))
    )
    healthy = shop.place_order(
        PlaceOrder(customer_id="h", lines=(OrderLineRequest(sku=SKUS[2], quantity=1),))
    )
    OrderHistory.broken.add(poison.order_id)
    workers = [
        make_follower(
            OrderHistory(), view_settings, worker_id=f"w{k}", partition=k, partitions=partitions
        )
        for k in range(partitions)
    ]
    with running(*workers):
        for placed in (poison, healthy):
            shop.capture_payment(CapturePayment(payment_id=placed.payment_id))
            shop.ship_order(ShipOrder(order_id=placed.order_id))
        wait_until_caught_up(pool, view_settings.schema, "order_history")

        assert history(pool, view_settings.schema, healthy.order_id) == [
            "placed",
            "paid",
            "shipped",
        ]
        assert history(pool, view_settings.schema, poison.order_id) == []
        with pool.connection() as conn:
            letters = DeadLetters(view_settings.schema).select(conn, consumer="order_history")
        assert [(d.originator_version, d.reason, d.attempts) for d in letters] == [
            (1, "failed", 3),
            (2, "behind", 0),
            (3, "behind", 0),
        ]
        head = letters[0]
        assert head.error_class == "RuntimeError"
        assert head.traceback is not None
        assert "is poison" in head.traceback

        # The handler is fixed; the operator retries the stream while the worker runs.
        OrderHistory.broken.clear()
        monkeypatch.setenv("DATABASE_URL", view_settings.database_url or "")
        monkeypatch.setenv("EVENTKIT_SCHEMA", view_settings.schema)
        assert main(["dlq", "retry", "--stream", str(poison.order_id), "--timeout", "10"]) == 0
        assert "retried 3; still parked 0" in capsys.readouterr().out
        assert history(pool, view_settings.schema, poison.order_id) == ["placed", "paid", "shipped"]
        with pool.connection() as conn:
            assert DeadLetters(view_settings.schema).select(conn) == []


def test_an_undecodable_event_is_a_dead_letter_not_a_crash_loop(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    recorder = PostgresEventRecorder(pool, view_settings.schema)
    placed = shop.place_order(
        PlaceOrder(customer_id="x", lines=(OrderLineRequest(sku=SKUS[3], quantity=1),))
    )
    # A payload that does not match Order.Paid (as if written by buggy or newer code).
    recorder.insert_events(
        [StoredEvent(placed.order_id, 2, EVENT_TYPES.name(Order.Paid), b'{"payment_id": 42}')]
    )
    later = shop.place_order(
        PlaceOrder(customer_id="y", lines=(OrderLineRequest(sku=SKUS[3], quantity=1),))
    )
    with running(make_follower(OrderSummaries(), view_settings)):
        wait_until_caught_up(pool, view_settings.schema, "order_summaries")
    with pool.connection() as conn:
        [letter] = DeadLetters(view_settings.schema).select(conn)
    assert (letter.originator_id, letter.reason) == (placed.order_id, "undecodable")
    assert "payment_id" in (letter.error or "")
    assert OrderSummaryQueries(pool, view_settings.schema).get(later.order_id) is not None


def test_a_second_worker_waits_and_takes_over_without_double_applying(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    first = make_follower(OrderHistory(), view_settings, worker_id="first")
    second = make_follower(OrderHistory(), view_settings, worker_id="second")
    stop_first, stop_second = threading.Event(), threading.Event()
    t1 = threading.Thread(target=first.run, args=(stop_first,))
    t1.start()
    workload(shop, 10, seed=1)
    first.caught_up.wait(10)
    t2 = threading.Thread(target=second.run, args=(stop_second,))
    t2.start()
    workload(shop, 10, seed=2)
    wait_until_caught_up(pool, view_settings.schema, "order_history")
    assert not second.caught_up.is_set(), "the second worker ran while the first held the lease"
    stop_first.set()
    t1.join()
    workload(shop, 10, seed=3)
    assert second.caught_up.wait(10)
    wait_until_caught_up(pool, view_settings.schema, "order_history")
    stop_second.set()
    t2.join()
    replay_equals_live(pool, view_settings, [OrderHistory])


def test_workers_recover_when_their_connections_are_killed(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    names = {p.name: f"doomed-{p.name}-{view_settings.schema}" for p in ALL}
    with running(*(make_follower(p(), view_settings, worker_id=names[p.name]) for p in ALL)):
        for seed in range(3):
            workload(shop, 15, seed=seed)
            deadline = time.monotonic() + 10
            killed: set[str] = set()
            while len(killed) < len(ALL) and time.monotonic() < deadline:
                # Kill each worker's connection once it has (re)connected.
                with pool.connection() as conn:
                    rows = conn.execute(
                        "WITH targets AS MATERIALIZED (SELECT pid, application_name"
                        " FROM pg_stat_activity WHERE application_name = ANY(%s))"
                        " SELECT application_name FROM targets WHERE pg_terminate_backend(pid)",
                        ([f"eventkit:{n}" for n in names.values()],),
                    ).fetchall()
                killed |= {r[0] for r in rows}
                time.sleep(0.01)
            assert killed == {f"eventkit:{n}" for n in names.values()}
        for p in ALL:
            wait_until_caught_up(pool, view_settings.schema, p.name)
    replay_equals_live(pool, view_settings, ALL)


def test_rebuild_under_load_never_shows_readers_an_empty_or_partial_view(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    orders = OrderSummaryQueries(pool, view_settings.schema)
    workload(shop, 40, seed=11)
    writers_stop, readers_stop = threading.Event(), threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def read() -> None:
        while not readers_stop.is_set():
            total = sum(orders.count_by_status().values())
            if seen and total < seen[-1]:
                problems.append(f"view shrank from {seen[-1]} to {total} rows")
            seen.append(total)
            time.sleep(0.005)

    with running(*(make_follower(p(), view_settings) for p in ALL)):
        wait_until_caught_up(pool, view_settings.schema, "order_summaries")
        reader = threading.Thread(target=read)
        writer = threading.Thread(target=workload, args=(shop, 2_000, 12, writers_stop))
        reader.start()
        writer.start()
        result = rebuild(
            OrderSummaries,
            url=str(view_settings.database_url),
            schema=view_settings.schema,
            recorder=PostgresEventRecorder(pool, view_settings.schema),
            mapper=PydanticMapper(),
            worker_id="rebuild-test",
            batch_size=50,
        )
        writers_stop.set()
        writer.join()
        wait_until_caught_up(pool, view_settings.schema, "order_summaries")
        readers_stop.set()
        reader.join()
    assert problems == []
    assert min(seen) >= 40
    assert result.applied >= 40
    with pool.connection() as conn:
        leftovers = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
            (view_settings.schema, "order_summaries\\_\\_%"),
        ).fetchone()
    assert leftovers == (0,)
    replay_equals_live(pool, view_settings, [OrderSummaries])


def test_status_reports_position_lag_state_and_dead_letters(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    workload(shop, 5, seed=3)
    before = {s.consumer: s for s in consumer_status(pool, view_settings.schema, ALL)}
    assert before["order_summaries"].state == "stopped"
    assert before["order_summaries"].lag_events > 0
    assert before["order_summaries"].lag_seconds >= 0
    with running(*(make_follower(p(), view_settings) for p in ALL)):
        for p in ALL:
            wait_until_caught_up(pool, view_settings.schema, p.name)
        after = {s.consumer: s for s in consumer_status(pool, view_settings.schema, ALL)}
    assert after["order_summaries"].state == "running"
    assert after["order_summaries"].lag_events == 0
    assert after["stock_levels"].position == after["stock_levels"].head
    assert {s.dead_letters for s in after.values()} == {0}


def test_reset_makes_the_next_worker_replay(
    shop: Shop,
    view_settings: Settings,
    pool: psycopg_pool.ConnectionPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workload(shop, 10, seed=5)
    with running(make_follower(StockLevels(), view_settings)):
        wait_until_caught_up(pool, view_settings.schema, "stock_levels")
    before = dump(pool, view_settings.schema, "stock_levels")
    monkeypatch.setenv("DATABASE_URL", view_settings.database_url or "")
    monkeypatch.setenv("EVENTKIT_SCHEMA", view_settings.schema)
    assert main(["reset", "stock_levels", "--to-origin", "--execute"]) == 0
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT to_regclass(format('%%I.stock_levels', %s::text))", (view_settings.schema,)
        ).fetchone()
    assert row == (None,)
    with running(make_follower(StockLevels(), view_settings)):
        wait_until_caught_up(pool, view_settings.schema, "stock_levels")
    assert dump(pool, view_settings.schema, "stock_levels") == before


def test_a_bad_projection_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "no_such_view"]) == 1
    assert "has no projection or reaction 'no_such_view'" in capsys.readouterr().err


def test_querying_a_view_no_worker_created_says_what_to_start(
    view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    with pytest.raises(ReadModelNotReadyError, match="eventkit workers order_summaries"):
        OrderSummaryQueries(pool, view_settings.schema).count_by_status()


def test_a_worker_creates_its_view_before_any_event(
    view_settings: Settings, pool: psycopg_pool.ConnectionPool
) -> None:
    with running(make_follower(OrderSummaries(), view_settings)):
        wait_until_caught_up(pool, view_settings.schema, "order_summaries")
    assert dump(pool, view_settings.schema, "order_summaries") == []


def hinted_shop_and_follower(
    view_settings: Settings, app_env: dict[str, str]
) -> tuple[Shop, Follower]:
    """A shop whose saves send hints (``EVENTKIT_NOTIFY``) and an order_summaries follower
    that listens for them and, idle, would poll again only after 10 minutes: an order
    reaches the view well before a test's wait gives up only if a hint woke it."""
    hinted = Settings(
        database_url=view_settings.database_url,
        schema=view_settings.schema,
        pool_min_size=2,
        pool_max_size=40,
        notify=True,
    )
    shop = Shop(env={**app_env, "EVENTKIT_NOTIFY": "1"})
    stock_up(shop)
    follower = make_follower(
        OrderSummaries(),
        hinted,
        poll=PollPolicy(min_interval_s=600.0, max_interval_s=600.0, lease_wait_s=0.05),
    )
    assert follower.options.notify_channel == hinted.notify_channel
    return shop, follower


def test_a_notification_hint_wakes_an_idle_worker_before_its_poll_interval(
    view_settings: Settings, pool: psycopg_pool.ConnectionPool, app_env: dict[str, str]
) -> None:
    shop, follower = hinted_shop_and_follower(view_settings, app_env)
    with running(follower):
        assert follower.caught_up.wait(60)
        time.sleep(0.2)  # the worker is now in its idle wait
        placed = shop.place_order(
            PlaceOrder(customer_id="hint", lines=(OrderLineRequest(sku=SKUS[0], quantity=1),))
        )
        OrderSummaryQueries(pool, view_settings.schema).wait_for(placed.notification_id, 60.0)


def test_a_hinted_event_held_back_by_an_older_writer_is_seen_once_that_writer_ends(
    view_settings: Settings,
    pool: psycopg_pool.ConnectionPool,
    app_env: dict[str, str],
    database_url: str,
) -> None:
    """The hint can arrive while its event is not readable yet: an older transaction that
    may still append holds it back (the log's horizon). The worker must look again soon,
    not sleep its poll interval (10 minutes here)."""
    shop, follower = hinted_shop_and_follower(view_settings, app_env)
    labels = {"kind": "projection", "consumer": OrderSummaries.name, "cause": "notification"}

    def woken() -> float:
        return REGISTRY.get_sample_value("eventkit_follower_wakeups_total", labels) or 0.0

    log = sql.Identifier(view_settings.schema, "stored_events")
    with running(follower):
        assert follower.caught_up.wait(60)
        time.sleep(0.2)  # the worker is now in its idle wait
        with psycopg.connect(database_url, autocommit=True) as older, older.transaction():
            # A writer of the log that has drawn its transaction id and not committed.
            older.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(log))
            older.execute("SELECT pg_current_xact_id()")
            before = woken()
            placed = shop.place_order(
                PlaceOrder(customer_id="held", lines=(OrderLineRequest(sku=SKUS[0], quantity=1),))
            )
            deadline = time.monotonic() + 60  # a safety net: the condition ends the wait
            while woken() == before:
                assert time.monotonic() < deadline, "the hint never woke the worker"
                time.sleep(0.01)
            time.sleep(0.3)  # its read finds the order held back; the older writer ends now
        OrderSummaryQueries(pool, view_settings.schema).wait_for(placed.notification_id, 60.0)


def test_status_watch_refreshes_until_told_to_stop(
    schema: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    assert main(["status", "--watch", "0.01", "--times", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("-- ") == 3  # not a terminal: one stamped report per refresh
    assert out.count("order_summaries") == 3
    assert out.count("charge_payments") == 3


@pytest.mark.parametrize(("durable", "expected"), [(False, "off"), (True, "on")])
def test_worker_connections_commit_views_without_waiting_for_the_disk_unless_asked(
    database_url: str, durable: bool, expected: str
) -> None:
    with connect(database_url, "test", 5.0, durable_commits=durable) as conn:
        row = conn.execute("SHOW synchronous_commit").fetchone()
        timeout = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
    assert row == (expected,)
    assert timeout == ("5s",)

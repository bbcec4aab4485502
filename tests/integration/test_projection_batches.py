"""How a worker's batch runs handlers' statements: queued, grouped, and still in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import psycopg
import psycopg_pool
import pytest
from psycopg import pq, sql

from eventkit.domain.names import EVENT_TYPES
from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import CapturePayment, OrderLineRequest, PlaceOrder
from eventkit.domain.shop.orders import Order
from eventkit.infrastructure.deadletters import DeadLetters
from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.leases import LeaseLostError
from eventkit.infrastructure.log import LoggedNotification, Position
from eventkit.projections.follower import BatchReport, Follower, connect
from eventkit.projections.projection import (
    Context,
    Projection,
    Table,
    UnexpectedRowCountError,
    handles,
)
from tests.integration.projection_support import (
    SKUS,
    OrderHistory,
    dump,
    make_follower,
    running,
    settings_for,
    stock_up,
    wait_until_caught_up,
)

NOTIFICATION = LoggedNotification(
    id=1,
    originator_id=uuid4(),
    originator_version=1,
    topic="Tested",
    state=b"{}",
    transaction_id=1,
    recorded_at=datetime.now(UTC),
)


@pytest.fixture
def conn(database_url: str, schema: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("CREATE TABLE {} (key text PRIMARY KEY, value bigint NOT NULL)").format(
                sql.Identifier(schema, "kv")
            )
        )
        yield connection


def test_queued_statements_run_in_order_and_each_gets_its_own_result(
    conn: psycopg.Connection[tuple[object, ...]], schema: str
) -> None:
    tables = {"kv": sql.Identifier(schema, "kv")}
    insert = "INSERT INTO {kv} (key, value) VALUES (%s, %s)"
    double = "UPDATE {kv} SET value = value * 2 WHERE key = %s RETURNING value"
    with conn.transaction(), conn.pipeline():
        context = Context(conn, tables, NOTIFICATION, deferred=True)
        first = context.execute(insert, ("a", 1))
        context.execute(insert, ("b", 2))
        doubled_a = context.execute(double, ("a",))
        context.execute(insert, ("c", 3))  # the same statement again, after another one
        doubled_c = context.execute(double, ("c",))
        missing = context.execute(double, ("nobody",))
        # Nothing has been sent yet: reading a result sends everything queued so far.
        assert doubled_c.fetchone() == (6,)
        assert doubled_c.fetchone() is None
        assert first.rowcount == 1
        assert doubled_a.fetchall() == [(2,)]
        assert (missing.rowcount, missing.fetchall()) == (0, [])
        # The connection itself is handed out only after the queue has been sent.
        context.execute(double, ("b",))
        row = context.conn.execute(
            sql.SQL("SELECT value FROM {} WHERE key = 'b'").format(tables["kv"])
        ).fetchone()
        assert row == (4,)
        context.flush()
    assert sorted(conn.execute(sql.SQL("SELECT * FROM {}").format(tables["kv"])).fetchall()) == [
        ("a", 2),
        ("b", 4),
        ("c", 6),
    ]


def test_direct_and_queued_contexts_give_the_same_results(
    conn: psycopg.Connection[tuple[object, ...]], schema: str
) -> None:
    tables = {"kv": sql.Identifier(schema, "kv")}
    outcomes = []
    for deferred in (False, True):
        with conn.transaction():
            context = Context(conn, tables, NOTIFICATION, deferred=deferred)
            inserted = context.execute(
                "INSERT INTO {kv} (key, value) VALUES (%s, 1), (%s, 2)", ("x", "y")
            )
            selected = context.execute("SELECT key, value FROM {kv} ORDER BY key")
            outcomes.append((inserted.rowcount, selected.fetchone(), selected.fetchall()))
            context.flush()
            conn.execute(sql.SQL("DELETE FROM {}").format(tables["kv"]))
    assert outcomes[0] == outcomes[1] == (2, ("x", 1), [("y", 2)])


class PositiveQuantities(Projection):
    """Writes without reading results, into a table whose CHECK rejects one order."""

    name = "positive_quantities"
    tables = (
        Table(
            "positive_quantities",
            "CREATE TABLE {table} (order_id uuid PRIMARY KEY, customer text NOT NULL"
            " CHECK (customer <> 'poison'))",
        ),
    )

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        context.execute(
            "INSERT INTO {positive_quantities} (order_id, customer) VALUES (%s, %s)",
            (event.originator_id, event.customer_id),
        )


def test_an_sql_error_seen_only_when_the_batch_is_sent_parks_exactly_its_event(
    app_env: dict[str, str], database_url: str, schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    shop = Shop(env=app_env)
    stock_up(shop)
    line = (OrderLineRequest(sku=SKUS[0], quantity=1),)
    placed = [
        shop.place_order(PlaceOrder(customer_id=customer, lines=line))
        for customer in ("c1", "c2", "poison", "c3", "c4")
    ]
    settings = settings_for(database_url, schema)
    # One batch holds all five orders, so the CHECK fails only when the batch is sent.
    with running(make_follower(PositiveQuantities(), settings, batch_size=1000)):
        wait_until_caught_up(pool, schema, PositiveQuantities.name)
    rows = dump(pool, schema, "positive_quantities")
    assert sorted(r[1] for r in rows) == ["c1", "c2", "c3", "c4"]
    with pool.connection() as conn:
        [letter] = DeadLetters(schema).select(conn, consumer=PositiveQuantities.name)
    poison = placed[2]
    assert (letter.originator_id, letter.originator_version) == (poison.order_id, 1)
    assert (letter.topic, letter.reason) == (EVENT_TYPES.name(Order.Placed), "failed")
    assert letter.error_class == "CheckViolation"


def test_a_result_kept_past_its_batch_cannot_be_read(
    conn: psycopg.Connection[tuple[object, ...]], schema: str
) -> None:
    tables = {"kv": sql.Identifier(schema, "kv")}
    with conn.transaction(), conn.pipeline():
        context = Context(conn, tables, NOTIFICATION, deferred=True)
        kept = context.execute("INSERT INTO {kv} (key, value) VALUES (%s, %s)", ("k", 1))
        context.flush(results=False)  # what the worker does once every handler returned
    with pytest.raises(EventkitError, match="after its batch was sent"):
        _ = kept.rowcount
    assert conn.execute(sql.SQL("SELECT value FROM {}").format(tables["kv"])).fetchall() == [(1,)]


def test_row_count_checks_fail_the_statement_s_event_queued_or_not(
    conn: psycopg.Connection[tuple[object, ...]], schema: str
) -> None:
    tables = {"kv": sql.Identifier(schema, "kv")}
    bump = "UPDATE {kv} SET value = value + 1 WHERE key = %s"
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('there', 1)").format(tables["kv"]))
    for deferred in (False, True):
        with (  # noqa: PT012 - the whole batch
            pytest.raises(UnexpectedRowCountError) as raised,
            conn.transaction(),
            conn.pipeline(),
        ):
            context = Context(conn, tables, NOTIFICATION, deferred=deferred)
            context.execute(bump, ("there",), expect_rows=1)
            context.execute(bump, ("missing",), expect_rows=1)
            context.flush(results=False)
        message = str(raised.value)
        assert f"stream {NOTIFICATION.originator_id} version 1" in message
        assert "touched 0 row(s), not 1" in message
        with (  # noqa: PT012 - the whole batch
            pytest.raises(LookupError, match="no row for 'missing'"),
            conn.transaction(),
            conn.pipeline(),
        ):
            context = Context(conn, tables, NOTIFICATION, deferred=deferred)
            context.execute(
                bump,
                ("missing",),
                expect_rows=1,
                otherwise=lambda n: LookupError(f"no row for 'missing' ({n} rows)"),
            )
            context.flush(results=False)
    # Every attempt rolled back.
    assert conn.execute(sql.SQL("SELECT value FROM {}").format(tables["kv"])).fetchall() == [(1,)]


class PaidOrders(Projection):
    """Counts payments of placed orders; an order placed by 'ghost' is never recorded."""

    name = "paid_orders"
    tables = (
        Table(
            "paid_orders",
            "CREATE TABLE {table} (order_id uuid PRIMARY KEY, paid boolean NOT NULL)",
        ),
    )

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        if event.customer_id != "ghost":
            context.execute(
                "INSERT INTO {paid_orders} (order_id, paid) VALUES (%s, false)",
                (event.originator_id,),
            )

    @handles
    def paid(self, event: Order.Paid, context: Context) -> None:
        context.execute(
            "UPDATE {paid_orders} SET paid = true WHERE order_id = %s",
            (event.originator_id,),
            expect_rows=1,
            otherwise=lambda _: LookupError(f"order {event.originator_id} was never placed"),
        )


def test_a_failed_row_count_check_in_a_batch_parks_exactly_its_event(
    app_env: dict[str, str], database_url: str, schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    shop = Shop(env=app_env)
    stock_up(shop)
    line = (OrderLineRequest(sku=SKUS[0], quantity=1),)
    placed = [
        shop.place_order(PlaceOrder(customer_id=customer, lines=line))
        for customer in ("c1", "ghost", "c2")
    ]
    for order in placed:
        shop.capture_payment(CapturePayment(payment_id=order.payment_id))
    settings = settings_for(database_url, schema)
    with running(make_follower(PaidOrders(), settings, batch_size=1000)):
        wait_until_caught_up(pool, schema, PaidOrders.name)
    ghost = placed[1].order_id
    rows = dump(pool, schema, "paid_orders")
    assert sorted(rows) == sorted((o.order_id, True) for o in (placed[0], placed[2]))
    with pool.connection() as conn:
        [letter] = DeadLetters(schema).select(conn, consumer=PaidOrders.name)
    assert (letter.originator_id, letter.topic) == (ghost, EVENT_TYPES.name(Order.Paid))
    assert letter.error_class == "LookupError"
    assert f"order {ghost} was never placed" in (letter.error or "")


def test_each_batch_report_says_when_its_events_were_read(
    app_env: dict[str, str], database_url: str, schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    """``BatchReport.read_at`` splits an event's latency into the log's part (commit to
    read) and the follower's (read to the view's commit): it lies between the two."""
    shop = Shop(env=app_env)
    stock_up(shop)
    line = (OrderLineRequest(sku=SKUS[0], quantity=1),)
    for customer in ("c1", "c2", "c3"):
        shop.place_order(PlaceOrder(customer_id=customer, lines=line))
    reports: list[tuple[float, BatchReport]] = []
    follower = make_follower(OrderHistory(), settings_for(database_url, schema), batch_size=2)
    follower.options = replace(
        follower.options, on_batch=lambda report: reports.append((time.time(), report))
    )
    with running(follower):
        wait_until_caught_up(pool, schema, OrderHistory.name)
    assert len(reports) >= 2  # batches of 2 events: more than one read
    seen = []
    for reported_at, report in reports:
        for n in report.notifications:
            assert n.recorded_at.timestamp() <= report.read_at <= reported_at, (n, report)
            seen.append(n.originator_id)
    assert sorted(map(str, seen)) == sorted(str(r[0]) for r in dump(pool, schema, "order_history"))


@contextmanager
def _three_orders_and_a_follower(
    app_env: dict[str, str], database_url: str, schema: str
) -> Iterator[tuple[Follower, psycopg.Connection[Any], Position]]:
    """Three placed orders, and a follower of OrderHistory working under its lease on its
    own connection (not yet stepped), with the position it starts from."""
    shop = Shop(env=app_env)
    stock_up(shop)
    line = (OrderLineRequest(sku=SKUS[0], quantity=1),)
    for customer in ("c1", "c2", "c3"):
        shop.place_order(PlaceOrder(customer_id=customer, lines=line))
    follower = make_follower(OrderHistory(), settings_for(database_url, schema))
    with connect(follower.options.url, "test", 60.0) as conn:
        lease = follower.leases.acquire(conn, OrderHistory.name, 0, "test")
        assert lease is not None
        follower.attach(conn, lease)
        yield follower, conn, follower.tracking.position(conn, OrderHistory.name)


def test_a_pipelined_batch_fenced_off_writes_nothing_and_ends_its_transaction(
    app_env: dict[str, str], database_url: str, schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    """A batch of several events sends BEGIN, its statements, the fence, the position and
    COMMIT in one pipeline: a fence that fails leaves nothing of the batch, and the
    connection out of its transaction, ready for the next."""
    with _three_orders_and_a_follower(app_env, database_url, schema) as (follower, conn, before):
        conn.execute(
            sql.SQL(
                "UPDATE {} SET owner = 'usurper', generation = nextval({}) WHERE consumer = %s"
            ).format(sql.Identifier(schema, "leases"), sql.Literal(f"{schema}.lease_generation")),
            (OrderHistory.name,),
        )
        with pytest.raises(LeaseLostError, match="taken by usurper"):
            follower.step(conn, threading.Event())
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert follower.tracking.position(conn, OrderHistory.name) == before
    assert dump(pool, schema, "order_history") == []


def test_a_batch_inside_the_caller_s_transaction_commits_with_it_only(
    app_env: dict[str, str], database_url: str, schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    """A rebuild's last stretch applies batches inside its own transaction (under its
    locks): a pipelined batch there is part of that transaction, and rolls back with it."""
    with _three_orders_and_a_follower(app_env, database_url, schema) as (follower, conn, before):
        with conn.transaction(force_rollback=True):  # the caller rolls back
            assert follower.finish(conn) > before
            assert conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "order_history"))
            ).fetchone() == (3,)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert follower.tracking.position(conn, OrderHistory.name) == before
    assert dump(pool, schema, "order_history") == []

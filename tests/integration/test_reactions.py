"""Reactions on a real PostgreSQL with the PostgreSQL dramatiq broker."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar
from uuid import UUID

import psycopg
import psycopg_pool
import pytest
from prometheus_client import REGISTRY
from psycopg import sql

from eventkit.cli import main as eventkit
from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import OrderLineRequest, PlaceOrder
from eventkit.domain.shop.orders import Order, OrderStatus
from eventkit.domain.shop.payments import PaymentStatus
from eventkit.infrastructure.broker import (
    BrokerKind,
    ClaimedMessage,
    Handover,
    create_broker,
    look_on_claim,
    message_for,
    message_id,
    queue_name,
)
from eventkit.infrastructure.deadletters import DeadLetters
from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.log import LoggedNotification, Position
from eventkit.infrastructure.partitions import record_partitions
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.tracking import Tracking
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections import moving
from eventkit.projections.group import WorkerGroup
from eventkit.projections.projection import Table, handles
from eventkit.projections.reaction import Reaction, ReactionContext
from eventkit.projections.reactor import QUEUE_PREFETCH_PER_THREAD, ReactionRuntime
from eventkit.projections.rebuild import rebuild
from eventkit.projections.shop import OrderSummaries
from eventkit.projections.shop.reactions import (
    ChargePayments,
    OrderMails,
    PaymentGatewayClient,
    ShipPaidOrders,
)
from eventkit.projections.status import reaction_status
from eventkit.shop.gateway import FakeGateway
from tests.integration.cutting_proxy import cutting_proxy
from tests.integration.projection_support import (
    FAST_POLL,
    make_follower,
    running,
    settings_for,
    stock_up,
)
from tests.integration.reaction_support import (
    FAST_BROKER,
    Audit,
    Effects,
    count,
    make_runtime,
    place,
    running_reactions,
    wait_for,
)


@pytest.fixture
def shop(app_env: dict[str, str]) -> Shop:
    shop = Shop(app_env)
    stock_up(shop)
    return shop


@pytest.fixture
def react_settings(database_url: str, schema: str) -> Settings:
    return settings_for(database_url, schema)


@pytest.fixture(autouse=True)
def _reset_effects() -> Iterator[None]:
    Effects.broken = set()
    Effects.calls.clear()
    yield
    Effects.broken = set()


def first_event(pool: psycopg_pool.ConnectionPool, schema: str, stream: UUID) -> LoggedNotification:
    """The notification of the first event of ``stream``."""
    with pool.connection() as conn:
        found = conn.execute(
            sql.SQL(
                "SELECT notification_id FROM {} WHERE originator_id = %s AND originator_version = 1"
            ).format(sql.Identifier(schema, "stored_events")),
            (stream,),
        ).fetchone()
    assert found is not None
    [n] = PostgresEventRecorder(pool, schema).notifications([found[0]])
    return n


def ledger_count(pool: psycopg_pool.ConnectionPool, schema: str, reaction: str) -> int:
    return count(pool, schema, "reaction_ledger", f"WHERE reaction = '{reaction}'")


def test_two_reactions_to_one_event_type_each_run_once_per_event(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    orders = place(shop, 40)
    executed = {"consumer": "effects", "outcome": "executed"}
    before = REGISTRY.get_sample_value("eventkit_reaction_messages_total", executed) or 0.0
    runtime = make_runtime([Effects(), Audit()], react_settings)
    with running_reactions(runtime):
        orders += place(shop, 40)  # while the reactions run
        wait_for(
            lambda: count(pool, schema, "effects") >= 80 and count(pool, schema, "audit") >= 80,
            "both reactions to handle 80 orders",
        )
    for table in ("effects", "audit"):
        with pool.connection() as conn:
            got = conn.execute(
                sql.SQL("SELECT order_id, count(*) FROM {} GROUP BY order_id").format(
                    sql.Identifier(schema, table)
                )
            ).fetchall()
        assert {r[0]: r[1] for r in got} == dict.fromkeys(orders, 1), table
    assert ledger_count(pool, schema, "effects") == 80
    assert ledger_count(pool, schema, "audit") == 80
    # Nothing is left in the queue: every message was acknowledged.
    assert count(pool, schema, "dramatiq_queue") == 0
    after = REGISTRY.get_sample_value("eventkit_reaction_messages_total", executed)
    assert after == before + 80


def test_a_redelivered_message_is_skipped_by_the_ledger(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    (order,) = place(shop, 1)
    runtime = make_runtime([Effects()], react_settings)
    executor = runtime.executors["effects"]
    with running_reactions(runtime):
        wait_for(lambda: count(pool, schema, "effects") == 1, "the first delivery")
    # The broker delivers the same message again (a worker died after the effect, before
    # its acknowledgement): the ledger holds it, so the handler does not run.
    version = 1
    n = first_event(pool, schema, order)
    executor.execute(
        message_id("effects", order, version),
        1,
        stream=order,
        version=version,
        notification_id=n.id,
        transaction_id=n.transaction_id,
    )
    assert executor.counts.duplicates == 1
    assert count(pool, schema, "effects") == 1
    assert sum(Effects.calls.values()) == 1


def test_a_poison_reaction_is_parked_after_exactly_n_tries_and_retried_from_the_cli(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    react_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> None:
    orders = place(shop, 6)
    poison = orders[2]
    Effects.broken = {poison}
    runtime = make_runtime([Effects()], react_settings)
    poison_message = message_id("effects", poison, 1)
    with running_reactions(runtime):
        wait_for(
            lambda: (
                count(pool, schema, "dead_letters") == 1 and count(pool, schema, "effects") == 5
            ),
            "the poison message to be parked and the others to run",
        )
        with pool.connection() as conn:
            [letter] = DeadLetters(schema).select(conn)
        assert letter.consumer == "effects"
        assert letter.message_id == poison_message
        assert letter.originator_id == poison
        assert letter.attempts == Effects.max_attempts == 3
        assert letter.error_class == "RuntimeError"
        assert letter.error is not None
        assert str(poison) in letter.error
        assert Effects.calls[poison_message] == 3  # exactly N tries, no more
        [status] = reaction_status(pool, schema, [Effects])
        assert (status.dead_letters, status.executed, status.queued) == (1, 5, 0)
        # Fixed: the operator retries it from the CLI.
        Effects.broken = set()
        monkeypatch.setenv("DATABASE_URL", database_url)
        monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
        monkeypatch.delenv("BROKER_URL", raising=False)
        assert eventkit(["dlq", "retry", str(letter.dead_letter_id), "--timeout", "30"]) == 0
    assert count(pool, schema, "effects") == 6
    assert Effects.calls[poison_message] == 4
    with pool.connection() as conn:
        after = DeadLetters(schema).get(conn, letter.dead_letter_id)
    assert after is not None
    assert after.status == "retried"


def test_a_projection_rebuild_triggers_no_reaction(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    place(shop, 20)
    runtime = make_runtime([Effects()], react_settings)
    with running_reactions(runtime):
        wait_for(lambda: ledger_count(pool, schema, "effects") == 20, "the reactions")
        calls_before = sum(Effects.calls.values())
        rebuild(
            OrderSummaries,
            url=str(react_settings.database_url),
            schema=schema,
            recorder=PostgresEventRecorder(pool, schema),
            mapper=PydanticMapper(),
            worker_id="test-rebuild",
        )
        place(shop, 1)  # a new event after the rebuild: its reaction runs, and only it
        wait_for(lambda: ledger_count(pool, schema, "effects") == 21, "the new event's reaction")
    assert sum(Effects.calls.values()) == calls_before + 1
    assert count(pool, schema, "effects") == 21


def test_replay_sends_messages_again_but_only_never_executed_ones_run(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    orders = place(shop, 10)
    runtime = make_runtime([Effects()], react_settings)
    lost = message_id("effects", orders[4], 1)
    with running_reactions(runtime):
        wait_for(lambda: ledger_count(pool, schema, "effects") == 10, "the reactions")
        # Pretend one message never ran (its effect and ledger record gone).
        with pool.connection() as conn:
            for table in ("effects", "reaction_ledger"):
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE message_id = %s").format(
                        sql.Identifier(schema, table)
                    ),
                    (lost,),
                )
        with pool.connection() as conn:
            recorder = PostgresEventRecorder(pool, schema)
            moves = moving.plan(conn, schema, recorder, Effects, "origin")
            moving.execute(conn, schema, Effects, moves)
        wait_for(
            lambda: (
                runtime.executors["effects"].counts.duplicates == 9
                and count(pool, schema, "effects") == 10
            ),
            "the replayed messages: nine skipped, one run",
        )
    assert Effects.calls[lost] == 2
    assert all(n == 1 for m, n in Effects.calls.items() if m != lost)


def test_the_shop_payment_process_runs_on_reactions_through_a_failing_gateway(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    from decimal import Decimal

    with FakeGateway(decline_over=Decimal("4.00")) as gateway:
        client = PaymentGatewayClient(gateway.url)
        reactions = [ChargePayments(shop, client), ShipPaidOrders(shop), OrderMails()]
        with pool.connection() as conn:  # mail every order of the test, however soon shipped
            Tracking(schema).set(conn, OrderMails.name, Position.ORIGIN)
        small = place(shop, 5)  # 1.25 each: captured
        big = shop.place_order(
            PlaceOrder(customer_id="big", lines=(OrderLineRequest(sku="SKU-002", quantity=4),))
        ).order_id  # 5.00: declined
        gateway.failing = True  # the first tries fail with 503
        runtime = make_runtime(reactions, react_settings)
        with running_reactions(runtime):
            wait_for(lambda: gateway.failed_calls() >= 6, "failed calls to the gateway")
            gateway.failing = False
            wait_for(lambda: count(pool, schema, "order_mails") == 6, "a mail for every order", 60)
        for order_id in small:
            assert shop.get_order(order_id).status is OrderStatus.SHIPPED
        big_order = shop.get_order(big)
        assert big_order.status is OrderStatus.CANCELLED
        assert shop.get_payment(big_order.payment_id).status is PaymentStatus.FAILED
        # Each payment was charged with one idempotency key: its message's id.
        keys = gateway.keys_per_payment()
        assert len(keys) == 6
        assert all(len(k) == 1 for k in keys.values())
        assert count(pool, schema, "dead_letters") == 0
        assert count(pool, schema, "order_mails", "WHERE kind = 'shipped'") == 5


def test_reactions_replay_moves_the_follower_to_just_before_the_position_named(
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    tracking = Tracking(schema)
    with pool.connection() as conn:
        tracking.set(conn, "order_mails", Position(900, 120))
    assert eventkit(["reactions", "replay", "order_mails", "--from", "700/45", "--yes"]) == 0
    with pool.connection() as conn:
        assert tracking.position(conn, "order_mails") == Position(700, 44)
    assert eventkit(["reactions", "replay", "order_mails", "--from", "0", "--yes"]) == 0
    with pool.connection() as conn:
        assert tracking.position(conn, "order_mails") == Position.ORIGIN
    assert eventkit(["reactions", "replay", "no_such_reaction", "--from", "0", "--yes"]) == 1
    assert "has no projection or reaction 'no_such_reaction'" in capsys.readouterr().err
    assert eventkit(["reactions", "replay", "order_mails", "--from", "soon", "--yes"]) == 2  # usage
    assert "is not a log position" in capsys.readouterr().err


def test_reactions_survive_their_database_connections_being_killed(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    """The backends of the followers, actors, broker and pool that work on this test's
    schema are terminated three times under load: each reaction still runs exactly once,
    and nothing is parked."""
    runtime = make_runtime([Effects()], react_settings)
    orders: list[UUID] = []
    with running_reactions(runtime):
        for _ in range(3):
            orders += place(shop, 15)
            time.sleep(0.1)
            with pool.connection() as conn:
                # Only backends whose last statement touched this test's schema: other
                # users of the server (a demo, another test run) are left alone.
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM "
                    "pg_stat_activity WHERE datname = current_database() AND "
                    "pid <> pg_backend_pid() AND application_name IN "
                    "('eventkit', 'eventkit:test', 'dramatiq-postgres') "
                    "AND strpos(query, %s) > 0",
                    (schema,),
                ).fetchone()
            assert row is not None
            assert row[0] > 0
            pool.check()  # replace the test's own idle connections that were killed
        wait_for(
            lambda: count(pool, schema, "effects") >= len(orders),
            f"a reaction for each of {len(orders)} orders",
            timeout=90,
        )
    with pool.connection() as conn:
        got = conn.execute(
            sql.SQL("SELECT order_id, count(*) FROM {} GROUP BY order_id").format(
                sql.Identifier(schema, "effects")
            )
        ).fetchall()
    assert dict(got) == dict.fromkeys(orders, 1)
    assert count(pool, schema, "dead_letters") == 0


class LosesConnections(Reaction):
    """Its first ``losses`` tries meet a lost database connection, more than its
    ``max_attempts``."""

    name = "loses_connections"
    start_from = "origin"  # events are written before the runtime starts
    max_attempts = 3
    min_backoff_ms = 10
    max_backoff_ms = 50
    losses = 5
    calls = 0
    tables = (Table("survivors", "CREATE TABLE {table} (message_id uuid, attempt integer)"),)

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        type(self).calls += 1
        if type(self).calls <= self.losses:
            # A real loss: the server ends the handler's session (an error of the same
            # class on a working connection would be a try: see test_bad_events.py).
            context.conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        context.execute(
            "INSERT INTO {survivors} (message_id, attempt) VALUES (%s, %s)",
            (context.message_id, context.attempt),
        )


def test_a_lost_database_connection_is_not_counted_as_a_try(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    LosesConnections.calls = 0
    place(shop, 1)
    runtime = make_runtime([LosesConnections()], react_settings)
    with running_reactions(runtime):
        wait_for(lambda: count(pool, schema, "survivors") == 1, "the reaction to run", 30)
    assert LosesConnections.calls == LosesConnections.losses + 1
    assert count(pool, schema, "dead_letters") == 0
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT attempt FROM {}").format(sql.Identifier(schema, "survivors"))
        ).fetchone()
    assert row == (1,)  # five lost connections, and this is still its first try


def test_a_reaction_follower_split_into_partitions_runs_each_reaction_once(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    with pool.connection() as conn:
        record_partitions(conn, schema, Effects.name, 3)
    orders = place(shop, 30)
    runtime = make_runtime([Effects()], react_settings, follow=False)
    group = WorkerGroup(
        runtime.consumers,
        url=shared_pool(react_settings)[1],
        schema=schema,
        worker_id="group",
        heartbeat_s=0.2,
        lease_ttl_s=2.0,
        poll=FAST_POLL,
    )
    stop = threading.Event()
    followers = threading.Thread(target=group.run, args=(stop,))
    followers.start()
    try:
        with running_reactions(runtime):
            orders += place(shop, 30)
            wait_for(lambda: count(pool, schema, "effects") >= 60, "60 reactions")
    finally:
        stop.set()
        followers.join(30)
    with pool.connection() as conn:
        got = conn.execute(
            sql.SQL("SELECT order_id, count(*) FROM {} GROUP BY order_id").format(
                sql.Identifier(schema, "effects")
            )
        ).fetchall()
        partitions = conn.execute(
            sql.SQL("SELECT partition FROM {} WHERE consumer = %s ORDER BY 1").format(
                sql.Identifier(schema, "tracking")
            ),
            (Effects.name,),
        ).fetchall()
    assert {r[0]: r[1] for r in got} == dict.fromkeys(orders, 1)
    assert ledger_count(pool, schema, "effects") == 60
    assert partitions == [(0,), (1,), (2,)]


class CommitMode(Reaction):
    """Records the synchronous_commit setting its execution's transaction commits with."""

    name = "commit_mode"
    start_from = "origin"  # events are written before the runtime starts
    tables = (Table("commit_mode", "CREATE TABLE {table} (message_id uuid, setting text)"),)

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        context.execute(
            "INSERT INTO {commit_mode} VALUES (%s, current_setting('synchronous_commit'))",
            (context.message_id,),
        )


@pytest.mark.parametrize(("durable", "expected"), [(False, "off"), (True, "on")])
def test_executions_commit_without_waiting_for_the_disk_unless_durable(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    react_settings: Settings,
    durable: bool,
    expected: str,
) -> None:
    place(shop, 3)
    runtime = make_runtime([CommitMode()], react_settings, durable_commits=durable)
    with running_reactions(runtime):
        wait_for(lambda: count(pool, schema, "commit_mode") == 3, "three executions")
    with pool.connection() as conn:
        settings = conn.execute(
            sql.SQL("SELECT DISTINCT setting FROM {}").format(sql.Identifier(schema, "commit_mode"))
        ).fetchall()
        # The pool's connection itself is untouched: the setting was the transaction's.
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    assert settings == [(expected,)]


class Swallower(Reaction):
    """Catches the error of a failing statement and returns as if all went well.

    It reads the statement's result, which runs the statement at once (otherwise it would
    be queued until the handler returns, where no handler code can catch its error)."""

    name = "swallower"
    start_from = "origin"  # events are written before the runtime starts
    max_attempts = 2
    min_backoff_ms = 10
    max_backoff_ms = 20

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            context.execute("SELECT 1 / 0").fetchone()


def test_a_handler_that_swallows_a_database_error_commits_nothing_and_is_parked(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    place(shop, 1)
    runtime = make_runtime([Swallower()], react_settings)
    with running_reactions(runtime):
        wait_for(lambda: count(pool, schema, "dead_letters") == 1, "the message to be parked")
    with pool.connection() as conn:
        [letter] = DeadLetters(schema).select(conn)
    assert letter.attempts == Swallower.max_attempts
    assert letter.error_class == "HandlerSwallowedError"
    assert count(pool, schema, "reaction_ledger") == 0


class Blocks(Reaction):
    """Writes a row, then blocks until released: a handler stuck in a call to a service."""

    name = "blocks"
    start_from = "origin"  # events are written before the runtime starts
    max_attempts = 1
    entered: ClassVar[threading.Event] = threading.Event()
    release: ClassVar[threading.Event] = threading.Event()
    tables = (Table("blocked", "CREATE TABLE {table} (message_id uuid PRIMARY KEY)"),)

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        context.execute("INSERT INTO {blocked} (message_id) VALUES (%s)", (context.message_id,))
        type(self).entered.set()
        assert type(self).release.wait(120), "never released"


def test_a_blocked_handler_holds_no_transaction_and_delays_no_follower(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    """While a reaction's handler hangs (after a write through its context), an unrelated
    projection still shows the orders placed meanwhile, and no session of the server has
    had a transaction open since before the handler began."""
    Blocks.entered.clear()
    Blocks.release.clear()
    place(shop, 1)
    runtime = make_runtime([Blocks()], react_settings)
    summaries = make_follower(OrderSummaries(), react_settings)
    with running_reactions(runtime):
        try:
            wait_for(Blocks.entered.is_set, "the handler to block")
            with pool.connection() as conn:
                row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            blocked_since = row[0]
            with running(summaries):
                later = place(shop, 3)
                wait_for(
                    lambda: (
                        count(pool, schema, "order_summaries", f"WHERE order_id IN {_ids(later)}")
                        == 3
                    ),
                    "order_summaries to show the orders placed while the handler blocks",
                )
            with pool.connection() as conn:
                open_since_then = conn.execute(
                    "SELECT pid, application_name, state, backend_xid::text, left(query, 120)"
                    " FROM pg_stat_activity WHERE datname = current_database()"
                    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                    " AND xact_start <= %s",
                    (blocked_since,),
                ).fetchall()
            assert open_since_then == []
        finally:
            Blocks.release.set()
        wait_for(lambda: count(pool, schema, "blocked") == 4, "the released handlers")
    assert count(pool, schema, "reaction_ledger") == 4


def _ids(orders: list[UUID]) -> str:
    return "(" + ", ".join(f"'{o}'" for o in orders) + ")"


class Twice(Reaction):
    """Both deliveries of one message wait for each other inside the handler, then write
    (reading the statement's result, which begins the record's transaction, when
    ``reads``)."""

    name = "twice"
    start_from = "origin"
    reads: ClassVar[bool] = False
    barrier: ClassVar[threading.Barrier] = threading.Barrier(2, timeout=30)
    tables = (Table("twice", "CREATE TABLE {table} (message_id uuid, attempt integer)"),)

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        type(self).barrier.wait()
        result = context.execute(
            "INSERT INTO {twice} (message_id, attempt) VALUES (%s, %s) RETURNING attempt",
            (context.message_id, context.attempt),
        )
        if self.reads:
            assert result.fetchone() == (context.attempt,)


@pytest.mark.parametrize("reads", [False, True])
def test_two_deliveries_at_once_run_the_handler_twice_and_write_once(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    react_settings: Settings,
    reads: bool,
) -> None:
    """A message redelivered while its first delivery still runs (a worker presumed dead):
    both handlers run, since neither holds a transaction while it does, and the ledger
    lets only one delivery's statements commit; the other is acknowledged as a duplicate."""
    Twice.reads = reads
    Twice.barrier = threading.Barrier(2, timeout=30)
    (order,) = place(shop, 1)
    runtime = make_runtime([Twice()], react_settings)
    executor = runtime.executors["twice"]
    with pool.connection() as conn:
        executor.create_tables(conn)
    [n] = [
        n
        for n in PostgresEventRecorder(pool, schema).read_notifications(Position.ORIGIN, 1000)
        if n.originator_id == order
    ]
    errors: list[BaseException] = []

    def deliver(attempt: int) -> None:
        try:
            executor.execute(
                message_id("twice", order, 1),
                attempt,
                stream=order,
                version=1,
                notification_id=n.id,
                transaction_id=n.transaction_id,
            )
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=deliver, args=(attempt,)) for attempt in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert (executor.counts.executed, executor.counts.duplicates) == (1, 1)
    assert count(pool, schema, "twice") == 1
    assert ledger_count(pool, schema, "twice") == 1


class Overruns(Reaction):
    """Waits 30 s for a service that never answers (Python code: interruptible), with a
    1 s limit per try."""

    name = "overruns"
    start_from = "origin"
    max_attempts = 2
    min_backoff_ms = 10
    max_backoff_ms = 50
    time_limit_ms = 1000
    tries: ClassVar[list[float]] = []
    tables = (Table("overran", "CREATE TABLE {table} (message_id uuid)"),)

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        type(self).tries.append(time.monotonic())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.05)
        context.execute("INSERT INTO {overran} (message_id) VALUES (%s)", (context.message_id,))


def test_a_handler_past_its_time_limit_is_stopped_retried_and_parked(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    Overruns.tries = []
    place(shop, 1)
    runtime = make_runtime([Overruns()], react_settings)
    started = time.monotonic()
    with running_reactions(runtime):
        wait_for(
            lambda: count(pool, schema, "dead_letters") == 1,
            "the message to be parked after two tries of about a second each",
            timeout=25,
        )
    elapsed = time.monotonic() - started
    with pool.connection() as conn:
        [letter] = DeadLetters(schema).select(conn)
    assert letter.attempts == Overruns.max_attempts == len(Overruns.tries) == 2
    assert letter.error_class == "TimeLimitExceededError"
    assert letter.error is not None
    assert "ran past its time limit of 1 s" in letter.error
    # Each try ran for its second and was stopped: far from the handler's 30 s.
    assert Overruns.tries[1] - Overruns.tries[0] >= 1.0
    assert elapsed < 25
    assert count(pool, schema, "overran") == 0
    assert count(pool, schema, "reaction_ledger") == 0


def test_messages_claimed_on_a_connection_that_died_are_handed_out_again(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, database_url: str
) -> None:
    """Issue 17 point 1: a claim commits on the server and its answer is lost with the
    connection (a server restart). The claiming worker lives on and keeps its heartbeat
    fresh, so the broker's maintenance never hands those messages out again; the consumer
    queues them again itself once it has a new connection."""
    orders = place(shop, 6)
    claims = tuple(f"UPDATE {n}".encode() for n in range(1, 10))
    with cutting_proxy(database_url, claims) as proxy:
        # Only the broker's connections go through the proxy.
        broker = create_broker(
            BrokerKind.POSTGRES,
            database_url=proxy.url,
            schema=schema,
            broker_url=None,
            options=FAST_BROKER,
        )
        runtime = ReactionRuntime(
            [Effects()],
            broker=broker,
            kind=BrokerKind.POSTGRES,
            url=database_url,
            schema=schema,
            pool=pool,
            recorder=PostgresEventRecorder(pool, schema),
            mapper=PydanticMapper(),
            worker_id="test",
            worker_threads=2,
            poll=FAST_POLL,
        )
        proxy.arm()
        with running_reactions(runtime):
            wait_for(proxy.cut.is_set, "a claim's answer to be lost")
            wait_for(
                lambda: count(pool, schema, "effects") == len(orders),
                "every message to run, those of the lost claim too",
            )
    assert count(pool, schema, "dead_letters") == 0
    assert ledger_count(pool, schema, "effects") == len(orders)
    assert sorted(Effects.calls.values()) == [1] * len(orders)


def test_a_message_queued_again_after_it_ran_is_skipped_by_the_claims_look(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    """The broker's claim looks the message up in the ledger (and loads its event) for the
    actor; one recorded already is acknowledged and skipped, its handler not run again."""
    (order,) = place(shop, 1)
    runtime = make_runtime([Effects()], react_settings)
    executor = runtime.executors["effects"]
    with running_reactions(runtime):
        wait_for(lambda: count(pool, schema, "effects") == 1, "the first delivery")
        wait_for(lambda: count(pool, schema, "dramatiq_queue") == 0, "its acknowledgement")
        n = first_event(pool, schema, order)
        # Queued again, as a replay or an operator would: the same message id.
        message = message_for(
            schema,
            "effects",
            stream=order,
            version=1,
            notification_id=n.id,
            transaction_id=n.transaction_id,
        )
        with pool.connection() as conn:
            Handover(BrokerKind.POSTGRES, schema).requeue(conn, [message])
        wait_for(lambda: executor.counts.duplicates == 1, "the second delivery to be skipped")
        wait_for(lambda: count(pool, schema, "dramatiq_queue") == 0, "its acknowledgement")
    assert count(pool, schema, "effects") == 1
    assert sum(Effects.calls.values()) == 1
    assert executor.counts.executed == 1


def test_a_claim_hands_each_message_out_with_its_queues_look(
    pool: psycopg_pool.ConnectionPool, schema: str, database_url: str
) -> None:
    """look_on_claim: the claim runs the queue's look for each message it takes, in its
    own statement, and the consumer hands the row out with the message; a queue without
    a look hands out none."""
    broker = create_broker(
        BrokerKind.POSTGRES,
        database_url=database_url,
        schema=schema,
        broker_url=None,
        options=FAST_BROKER,
    )
    looked_queue, plain_queue = queue_name(schema, "looked"), queue_name(schema, "plain")
    assert look_on_claim(
        broker,
        looked_queue,
        sql.SQL("SELECT next.message_id, (next.message -> 'kwargs' ->> 'version')::int"),
    )
    stream = UUID(int=7)
    messages = {
        reaction: message_for(
            schema, reaction, stream=stream, version=3, notification_id=1, transaction_id=1
        )
        for reaction in ("looked", "plain")
    }
    with pool.connection() as conn:
        Handover(BrokerKind.POSTGRES, schema).requeue(conn, list(messages.values()))
    try:
        looked = broker.consume(looked_queue, prefetch=4)
        claimed = first_claimed(looked)
        assert isinstance(claimed, ClaimedMessage)
        assert claimed.message_id == messages["looked"]["message_id"]
        assert claimed.looked == (UUID(messages["looked"]["message_id"]), 3)
        looked.close()
        plain = broker.consume(plain_queue, prefetch=4)
        claimed = first_claimed(plain)
        assert isinstance(claimed, ClaimedMessage)
        assert claimed.message_id == messages["plain"]["message_id"]
        assert claimed.looked is None
        plain.close()
    finally:
        broker.close()


def first_claimed(consumer: Any) -> Any:
    """The first message ``consumer`` hands out (it hands out None while it waits)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        item = next(consumer)
        if item is not None:
            return item
    raise AssertionError("no message claimed within 30 s")


def test_a_worker_process_holds_four_messages_per_worker_thread(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, react_settings: Settings
) -> None:
    """The consumer claims for 4 messages per worker thread (dramatiq's default, 2, made
    each claim's round trip serve ~6 messages), and the messages all run once."""
    orders = place(shop, 20)
    runtime = make_runtime([Effects()], react_settings, threads=3)
    with running_reactions(runtime):
        wait_for(lambda: count(pool, schema, "effects") == len(orders), "every message to run")
        assert runtime.worker is not None
        consumer = runtime.worker.consumers[queue_name(schema, "effects")]
        assert consumer.prefetch == QUEUE_PREFETCH_PER_THREAD * 3 == 12
    assert sorted(Effects.calls.values()) == [1] * len(orders)

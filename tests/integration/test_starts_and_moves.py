"""Where consumers start the first time they run, and operators moving them (every
partition), on a real PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import psycopg_pool
import pytest
from psycopg import sql

from eventkit.cli import main as eventkit
from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import CancelOrder
from eventkit.domain.shop.orders import Order
from eventkit.infrastructure.log import Position, StartFrom
from eventkit.infrastructure.partitions import set_partitions
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.projection import Context, Projection, Table, handles
from eventkit.projections.reaction import Reaction, ReactionContext
from tests.integration.projection_support import (
    make_follower,
    running,
    settings_for,
    stock_up,
    wait_until_caught_up,
)
from tests.integration.reaction_support import (
    count,
    make_runtime,
    place,
    running_reactions,
    wait_for,
)


@pytest.fixture
def consumer_settings(database_url: str, schema: str) -> Settings:
    return settings_for(database_url, schema)


@pytest.fixture
def shop(app_env: dict[str, str]) -> Shop:
    shop = Shop(app_env)
    stock_up(shop)
    return shop


class PlacedOrders(Projection):
    """The orders placed, one row each: a view to see which events a start included."""

    name = "placed_orders"
    tables = (Table("placed_orders", "CREATE TABLE {table} (order_id uuid PRIMARY KEY)"),)

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        context.execute("INSERT INTO {placed_orders} VALUES (%s)", (event.originator_id,))


class Greetings(Reaction):
    """Greets each placed order, through the ledger (a reaction's default start: the head)."""

    name = "greetings"
    tables = (Table("greetings", "CREATE TABLE {table} (order_id uuid PRIMARY KEY)"),)

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        context.execute("INSERT INTO {greetings} VALUES (%s)", (event.originator_id,))


def ids(pool: psycopg_pool.ConnectionPool, schema: str, table: str) -> set[UUID]:
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT order_id FROM {}").format(sql.Identifier(schema, table))
        )
        return {r[0] for r in rows}


def started(pool: psycopg_pool.ConnectionPool, schema: str, name: str) -> bool:
    with pool.connection() as conn:
        return bool(Tracking(schema).positions(conn, name))


def test_a_new_reaction_starts_at_the_head_and_never_acts_on_older_events(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, consumer_settings: Settings
) -> None:
    before = place(shop, 3, "old")
    with running_reactions(make_runtime([Greetings()], consumer_settings)):
        wait_for(lambda: started(pool, schema, "greetings"), "the reaction's first run")
        after = place(shop, 2, "new")
        wait_for(lambda: count(pool, schema, "greetings") >= 2, "greetings of the new orders")
    greeted = ids(pool, schema, "greetings")
    assert greeted == set(after)
    assert not greeted & set(before)


@pytest.mark.parametrize("how", ["position", "time"])
def test_a_projection_declared_to_start_at_a_position_or_a_time_starts_there(
    how: str,
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    consumer_settings: Settings,
) -> None:
    recorder = PostgresEventRecorder(pool, schema)
    before = place(shop, 3, "old")
    with pool.connection() as conn:
        now = conn.execute("SELECT clock_timestamp()").fetchone()
    assert now is not None
    start: StartFrom = recorder.last_recorded() or Position.ORIGIN if how == "position" else now[0]
    assert isinstance(start, Position | datetime)
    after = place(shop, 2, "new")

    class FromThere(PlacedOrders):
        start_from = start

    with running(make_follower(FromThere(), consumer_settings)):
        wait_until_caught_up(pool, schema, FromThere.name)
    seen = ids(pool, schema, "placed_orders")
    assert seen == set(after)
    assert not seen & set(before)


def cancel(shop: Shop, orders: list[UUID]) -> None:
    for order_id in orders:
        shop.cancel_order(CancelOrder(order_id=order_id, reason="test"))


def test_reset_moves_every_partition_and_is_a_dry_run_unless_executed(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The shop's order_mails, split into 3 partitions and at the head, moved to the origin:
    the dry run prints each partition's move and the cancellations it covers, and changes
    nothing; --execute moves all three (the bug: only partition 0 moved)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    orders = place(shop, 9)
    cancel(shop, orders)
    head = PostgresEventRecorder(pool, schema).last_recorded()
    assert head is not None
    tracking = Tracking(schema)
    with pool.connection() as conn:
        set_partitions(conn, schema, "order_mails", 3)
        for k in range(3):
            tracking.set(conn, "order_mails", head, k)

    assert eventkit(["reset", "order_mails", "--to-origin"]) == 0
    out = capsys.readouterr().out
    assert "reaction order_mails to the origin of the log" in out
    covered = 0
    for k in range(3):
        line = next(x for x in out.splitlines() if x.strip().startswith(f"partition {k}:"))
        assert f"{head} -> 0/0" in line
        covered += int(line.split("(")[1].split(" ")[0].replace(",", ""))
    assert covered == 9  # the nine cancellations, whichever partition each is in
    assert "dry run: nothing moved" in out
    with pool.connection() as conn:
        assert tracking.positions(conn, "order_mails") == {0: head, 1: head, 2: head}

    assert eventkit(["reset", "order_mails", "--to-origin", "--execute"]) == 0
    with pool.connection() as conn:
        assert set(tracking.positions(conn, "order_mails").values()) == {Position.ORIGIN}

    assert eventkit(["reactions", "replay", "order_mails", "--from", "0", "--yes"]) == 0
    assert eventkit(["reset", "order_mails", "--to-head", "--execute"]) == 0
    with pool.connection() as conn:
        positions = tracking.positions(conn, "order_mails")
    assert len(positions) == 3
    assert set(positions.values()) == {PostgresEventRecorder(pool, schema).head()}


def test_a_projection_is_never_moved_back_onto_its_own_view(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    place(shop, 2)
    middle = PostgresEventRecorder(pool, schema).last_recorded()
    place(shop, 2)
    head = PostgresEventRecorder(pool, schema).last_recorded()
    assert middle is not None
    assert head is not None
    with pool.connection() as conn:
        Tracking(schema).set(conn, "order_summaries", head)
    assert eventkit(["reset", "order_summaries", "--to-position", str(middle), "--execute"]) == 1
    assert "would apply events to its view a second time" in capsys.readouterr().err
    with pool.connection() as conn:
        assert Tracking(schema).position(conn, "order_summaries") == head
    assert eventkit(["reset", "order_summaries", "--to-datetime", "yesterday"]) == 2  # usage
    assert "--to-datetime 'yesterday' is not an ISO 8601 time" in capsys.readouterr().err

"""Events that cannot be decoded or written are parked, never retried forever (issue 17,
points 2 and 6), on a real PostgreSQL: by a projection's follower, a reaction's executor
and a rebuild; ``repository.get`` names the stream and version; a stored topic never
imports anything."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import ClassVar
from uuid import UUID, uuid4

import psycopg_pool
import pytest
from eventsourcing.persistence import StoredEvent

from eventkit.cli import main as eventkit
from eventkit.domain.names import EVENT_TYPES
from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.orders import Order
from eventkit.infrastructure.deadletters import DeadLetter, DeadLetters
from eventkit.infrastructure.errors import EventDecodingError
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.projections.projection import Context, Projection, Table, handles
from eventkit.projections.reaction import Reaction, ReactionContext
from eventkit.projections.shop import OrderSummaries, OrderSummaryQueries
from tests.integration.projection_support import (
    SKUS,
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

PAID = EVENT_TYPES.name(Order.Paid)
PLACED = EVENT_TYPES.name(Order.Placed)

#: Each bad payload the issue lists for a declared type, and what its error says.
BAD_PAYLOADS: dict[str, tuple[bytes, str]] = {
    "class_version x": (b'{"class_version": "x"}', "class_version is 'x'"),
    "invalid JSON": (b"{not json", "not JSON"),
    "invalid UTF-8": (b'{"payment_id": "\xff"}', "not JSON"),
    "JSON array": (b"[1, 2]", "not a JSON object"),
    "missing field": (b"{}", "Field required"),
    "future class version": (b'{"class_version": 99}', "class_version 99"),
}
#: And stored topics that name no declared type.
BAD_TOPICS: dict[str, str] = {"unknown topic": "no.such.Event", "module path": "this:s"}


@pytest.fixture
def shop(app_env: dict[str, str]) -> Shop:
    shop = Shop(app_env)
    stock_up(shop)
    return shop


@pytest.fixture
def view_settings(database_url: str, schema: str) -> Settings:
    return settings_for(database_url, schema)


def insert(pool: psycopg_pool.ConnectionPool, schema: str, *events: StoredEvent) -> None:
    PostgresEventRecorder(pool, schema).insert_events(list(events))


def bad_payments(shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str) -> dict[UUID, str]:
    """An order placed for each bad payload, whose version 2 (an ``Order.Paid``) holds it."""
    streams: dict[UUID, str] = {}
    for case, (state, _) in BAD_PAYLOADS.items():
        order = place(shop, 1, tag=case.replace(" ", "-"), sku=SKUS[3])[0]
        insert(pool, schema, StoredEvent(order, 2, PAID, state))
        streams[order] = case
    return streams


def assert_undecodable(letters: list[DeadLetter], streams: dict[UUID, str]) -> None:
    """Each letter parked at once as undecodable, its error naming the event and what is
    wrong with it."""
    for letter in letters:
        case = streams[letter.originator_id]
        assert (letter.reason, letter.attempts, letter.error_class) == (
            "undecodable",
            1,
            "EventDecodingError",
        ), case
        assert letter.error is not None
        assert BAD_PAYLOADS[case][1] in letter.error, (case, letter.error)
        assert f"stream {letter.originator_id} version {letter.originator_version}" in (
            letter.error
        )


def test_a_projection_parks_every_kind_of_bad_row_and_goes_on(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    streams = bad_payments(shop, pool, schema)
    later = place(shop, 1, tag="later", sku=SKUS[3])[0]
    with running(make_follower(OrderSummaries(), view_settings)):
        wait_until_caught_up(pool, schema, "order_summaries")
    with pool.connection() as conn:
        letters = DeadLetters(schema).select(conn, consumer="order_summaries")
    assert sorted((streams[d.originator_id], d.originator_version) for d in letters) == sorted(
        (case, 2) for case in BAD_PAYLOADS
    )
    assert_undecodable(letters, streams)
    assert OrderSummaryQueries(pool, schema).get(later) is not None


class Acknowledges(Reaction):
    """Records each placed order it is given."""

    name = "acknowledges"
    start_from = "origin"
    max_attempts = 3
    min_backoff_ms = 10
    max_backoff_ms = 50
    tables = (Table("acknowledged", "CREATE TABLE {table} (order_id uuid PRIMARY KEY)"),)

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        context.execute("INSERT INTO {acknowledged} VALUES (%s)", (event.originator_id,))


def test_a_reaction_parks_every_kind_of_bad_row_and_goes_on(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    streams = {uuid4(): case for case in BAD_PAYLOADS}
    insert(
        pool,
        schema,
        *(StoredEvent(s, 1, PLACED, BAD_PAYLOADS[case][0]) for s, case in streams.items()),
    )
    good = place(shop, 2, tag="good", sku=SKUS[3])
    with running_reactions(make_runtime([Acknowledges()], view_settings)):
        wait_for(
            lambda: (
                count(pool, schema, "dead_letters") == len(streams)
                and count(pool, schema, "acknowledged") == len(good)
            ),
            "every bad row parked and the good ones run",
        )
    with pool.connection() as conn:
        letters = DeadLetters(schema).select(conn, consumer="acknowledges")
    assert sorted(streams[d.originator_id] for d in letters) == sorted(BAD_PAYLOADS)
    assert_undecodable(letters, streams)


@pytest.mark.parametrize("case", [*BAD_PAYLOADS, *BAD_TOPICS])
def test_repository_get_names_the_stream_and_version_it_cannot_decode(
    shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str, case: str
) -> None:
    order = place(shop, 1, tag="get", sku=SKUS[3])[0]
    if case in BAD_TOPICS:
        stored = StoredEvent(order, 2, BAD_TOPICS[case], b"{}")
        reason = "unknown event type"
    else:
        stored = StoredEvent(order, 2, PAID, BAD_PAYLOADS[case][0])
        reason = BAD_PAYLOADS[case][1]
    insert(pool, schema, stored)
    with pytest.raises(EventDecodingError) as raised:
        shop.repository.get(order)
    assert f"stream {order} version 2" in str(raised.value)
    assert reason in str(raised.value)


def test_a_stored_module_path_is_never_imported_by_the_readers(
    shop: Shop,
    app_env: dict[str, str],
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    tmp_path: pytest.TempPathFactory,
) -> None:
    """A row whose topic is ``this:s`` neither imports ``this`` (which prints the Zen of
    Python) nor any module of the reader's path, in repository.get, a follower or rebuild."""
    order = place(shop, 1, tag="zen", sku=SKUS[3])[0]
    insert(
        pool,
        schema,
        StoredEvent(order, 2, "this:s", b"{}"),
        StoredEvent(order, 3, "bad_events_tripwire:Boom", b"{}"),
        # A declared type whose created event names a module as its aggregate.
        StoredEvent(uuid4(), 1, PLACED, b'{"originator_topic": "this:s"}'),
    )
    script = """
import json, os, sys, threading
from uuid import UUID
from eventkit.domain.shop.application import Shop
from eventkit.infrastructure.errors import EventDecodingError
from eventkit.cli import main
env = json.loads(sys.argv[1])
try:
    Shop(env).repository.get(UUID(sys.argv[2]))
except EventDecodingError as e:
    print("decoding error:", e)
os.environ.update(env)
main(["rebuild", "order_summaries"])
print("imported:", "this" in sys.modules, "bad_events_tripwire" in sys.modules)
"""
    (tmp_path / "bad_events_tripwire.py").write_text("print('TRIPPED')\nclass Boom: pass\n")  # type: ignore[operator]
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(app_env), str(order)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert f"decoding error: cannot decode stream {order} version 2 (topic this:s)" in out
    assert "imported: False False" in out
    assert "Beautiful is better than ugly" not in out
    assert "TRIPPED" not in out


class SlowOnPoison(Projection):
    """Runs a statement past a statement timeout for the orders in ``poison``."""

    name = "slow_on_poison"
    start_from = "origin"
    poison: ClassVar[set[UUID]] = set()
    tables = (Table("slow_orders", "CREATE TABLE {table} (order_id uuid PRIMARY KEY)"),)

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        if event.originator_id in self.poison:
            context.execute("SET LOCAL statement_timeout = '20ms'")
            context.execute("SELECT pg_sleep(2)")
        context.execute("INSERT INTO {slow_orders} VALUES (%s)", (event.originator_id,))


class SlowReaction(Reaction):
    """The reaction's twin of :class:`SlowOnPoison`."""

    name = "slow_reaction"
    start_from = "origin"
    max_attempts = 3
    min_backoff_ms = 10
    max_backoff_ms = 50
    poison: ClassVar[set[UUID]] = set()
    tables = (Table("slow_reactions", "CREATE TABLE {table} (order_id uuid PRIMARY KEY)"),)

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        if event.originator_id in self.poison:
            context.execute("SET LOCAL statement_timeout = '20ms'")
            context.execute("SELECT pg_sleep(2)")
        context.execute("INSERT INTO {slow_reactions} VALUES (%s)", (event.originator_id,))


def test_a_handler_statement_past_its_statement_timeout_is_a_try_and_is_parked(
    shop: Shop, view_settings: Settings, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    """psycopg classes QueryCanceled as an OperationalError; the connection still works,
    so it is the event's failure: tried, then parked, for a projection and a reaction."""
    orders = place(shop, 5, tag="slow", sku=SKUS[3])
    poison = orders[2]
    SlowOnPoison.poison = SlowReaction.poison = {poison}
    try:
        with (
            running(make_follower(SlowOnPoison(), view_settings)),
            running_reactions(make_runtime([SlowReaction()], view_settings)),
        ):
            wait_until_caught_up(pool, schema, "slow_on_poison")
            wait_for(
                lambda: (
                    count(pool, schema, "dead_letters", "WHERE consumer = 'slow_reaction'") == 1
                ),
                "the reaction's message to be parked",
            )
    finally:
        SlowOnPoison.poison = SlowReaction.poison = set()
    with pool.connection() as conn:
        letters = DeadLetters(schema).select(conn)
    assert sorted((d.consumer, d.originator_id, d.reason, d.attempts) for d in letters) == [
        ("slow_on_poison", poison, "failed", 3),
        ("slow_reaction", poison, "failed", SlowReaction.max_attempts),
    ]
    assert {d.error_class for d in letters} == {"QueryCanceled"}
    assert count(pool, schema, "slow_orders") == count(pool, schema, "slow_reactions") == 4


def test_rebuild_parks_a_row_it_cannot_decode_and_finishes(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    streams = bad_payments(shop, pool, schema)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    assert eventkit(["rebuild", "order_summaries"]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    with pool.connection() as conn:
        letters = DeadLetters(schema).select(conn)
    assert sorted(streams[d.originator_id] for d in letters) == sorted(BAD_PAYLOADS)
    assert {d.reason for d in letters} == {"undecodable"}

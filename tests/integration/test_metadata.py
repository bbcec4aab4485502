"""Metadata on events, on a real PostgreSQL: set around a command, stored in columns of its
own, shown by stored_events_json and carried by every reader's notifications."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

import psycopg_pool
import pytest
from eventsourcing.persistence import StoredEvent
from psycopg import sql

import eventkit
from eventkit.domain.metadata import Metadata, current_metadata
from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import RegisterStockItem
from eventkit.domain.shop.stock import StockItem
from eventkit.infrastructure.errors import EventEncodingError
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.recorder import COPY_THRESHOLD, PostgresEventRecorder
from tests.integration.log_support import wait_until_readable
from tests.integration.projection_support import settings_for
from tests.integration.reaction_support import Restock, make_runtime, running_reactions, wait_for


def events(stream: UUID, first: int, count: int) -> list[StoredEvent]:
    return [
        StoredEvent(stream, v, "Tested", json.dumps({"v": v}).encode())
        for v in range(first, first + count)
    ]


def metadata_in_sql(
    pool: psycopg_pool.ConnectionPool, schema: str, stream: UUID
) -> list[tuple[Any, ...]]:
    with pool.connection() as conn:
        return conn.execute(
            sql.SQL(
                "SELECT originator_version, correlation_id, causation_id, headers "
                "FROM {} WHERE originator_id = %s ORDER BY originator_version"
            ).format(sql.Identifier(schema, "stored_events_json")),
            (stream,),
        ).fetchall()


@pytest.mark.parametrize("size", [1, COPY_THRESHOLD + 1])
def test_events_carry_the_metadata_of_their_context(
    recorder: PostgresEventRecorder, pool: psycopg_pool.ConnectionPool, schema: str, size: int
) -> None:
    stream = uuid4()
    headers = {"user": "ada", "tenant": "t1", "request_id": "r-7", "attempt": 2}
    with eventkit.metadata(correlation_id="corr-1", causation_id="req-7", headers=headers):
        recorder.insert_events(events(stream, 1, size))
    recorder.insert_events(events(stream, size + 1, 1))  # outside: nothing

    rows = metadata_in_sql(pool, schema, stream)
    assert rows[:size] == [(v, "corr-1", "req-7", headers) for v in range(1, size + 1)]
    assert rows[size] == (size + 1, None, None, None)
    with pool.connection() as conn:
        found = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {} WHERE headers->>'tenant' = 't1' AND originator_id = %s"
            ).format(sql.Identifier(schema, "stored_events_json")),
            (stream,),
        ).fetchone()
    assert found == (size,)

    wait_until_readable(recorder)
    notifications = recorder.read_notifications(Position.ORIGIN, 1000)
    assert [(n.correlation_id, n.causation_id, n.headers) for n in notifications] == [
        ("corr-1", "req-7", headers)
    ] * size + [(None, None, None)]
    scanned = recorder.scan(Position.ORIGIN, 1000, ["Tested"]).notifications
    assert [n.headers for n in scanned] == [headers] * size + [None]
    by_id = recorder.notifications([notifications[0].id])
    assert by_id[0].correlation_id == "corr-1"


def test_contexts_nest_and_merge_their_headers() -> None:
    assert current_metadata() is None
    with eventkit.metadata(correlation_id="c", headers={"user": "ada", "tenant": "t1"}):
        with eventkit.metadata(causation_id="x", headers={"user": "bob"}) as inner:
            assert inner == Metadata("c", "x", {"user": "bob", "tenant": "t1"})
            assert current_metadata() == inner
        outer = current_metadata()
        assert outer is not None
        assert outer.causation_id is None
        assert dict(outer.headers) == {"user": "ada", "tenant": "t1"}
    assert current_metadata() is None


def test_bad_metadata_is_refused_by_name(recorder: PostgresEventRecorder) -> None:
    bad: Any = uuid4()
    with (
        pytest.raises(TypeError, match="correlation_id must be a str"),
        eventkit.metadata(correlation_id=bad),
    ):
        pass
    with (
        eventkit.metadata(headers={"when": object()}),
        pytest.raises(EventEncodingError, match="headers"),
    ):
        recorder.insert_events(events(uuid4(), 1, 1))


def test_applications_append_with_the_metadata_in_force(
    app_env: dict[str, str], pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    shop = Shop(env=app_env)
    with eventkit.metadata(correlation_id="order-flow-1", headers={"user": "ada"}):
        shop.register_stock_item(RegisterStockItem(sku="TEA", name="Tea", unit_price="3.20"))
    rows = metadata_in_sql(pool, schema, StockItem.id_for("TEA"))
    assert rows == [(1, "order-flow-1", None, {"user": "ada"})]


def test_appends_without_prepared_statements_carry_metadata_too(
    pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    recorder = PostgresEventRecorder(pool, schema)
    recorder._statements._use_prepared = False
    stream = uuid4()
    with eventkit.metadata(correlation_id="c", causation_id="d", headers={"k": "v"}):
        recorder.insert_events(events(stream, 1, 3))
    assert metadata_in_sql(pool, schema, stream) == [(v, "c", "d", {"k": "v"}) for v in (1, 2, 3)]


def test_a_reactions_commands_carry_the_metadata_of_the_event_they_react_to(
    app_env: dict[str, str],
    database_url: str,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
) -> None:
    shop = Shop(env=app_env)
    Restock.shop = shop
    first, second = StockItem.id_for("TEA"), StockItem.id_for("COFFEE")
    with eventkit.metadata(correlation_id="req-9", headers={"user": "ada", "traceparent": "x"}):
        shop.register_stock_item(RegisterStockItem(sku="TEA", name="Tea", unit_price="3.20"))
    shop.register_stock_item(RegisterStockItem(sku="COFFEE", name="Coffee", unit_price="4"))
    runtime = make_runtime([Restock()], settings_for(database_url, schema))
    try:
        with running_reactions(runtime):
            wait_for(
                lambda: (
                    len(metadata_in_sql(pool, schema, first)) == 2
                    and len(metadata_in_sql(pool, schema, second)) == 2
                ),
                "the reaction to receive stock for both skus",
            )
    finally:
        Restock.shop = None
    recorder = PostgresEventRecorder(pool, schema)
    wait_until_readable(recorder)
    registered = {
        n.originator_id: n
        for n in recorder.read_notifications(Position.ORIGIN, 100)
        if n.originator_version == 1
    }
    caused = metadata_in_sql(pool, schema, first)[1]
    assert caused == (2, "req-9", str(registered[first].id), {"user": "ada"})
    # An event without a correlation id starts a chain: its own id correlates it.
    started = metadata_in_sql(pool, schema, second)[1]
    cause = str(registered[second].id)
    assert started == (2, cause, cause, None)

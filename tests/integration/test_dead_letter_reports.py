"""Logs and metrics say what was committed: a dead letter is reported once it is stored.

A follower that loses its lease while it retries a failing event parks the event in a
transaction that the lease's fence rolls back: no dead letter is stored, so none may be
logged or counted; the follower says it was fenced off instead.
"""

from __future__ import annotations

import logging
import threading
from typing import ClassVar
from uuid import UUID

import psycopg_pool
import pytest
from prometheus_client import REGISTRY
from psycopg import sql

from eventkit.cli import main as eventkit
from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.orders import Order
from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.partitions import Partition
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.follower import Follower, FollowerOptions, RetryPolicy
from eventkit.projections.projection import Context, Projection, handles
from tests.integration.projection_support import FAST_POLL, running, settings_for, stock_up
from tests.integration.reaction_support import place, wait_for


class FailsTwice(Projection):
    """Fails on every placed order; its second try waits until the test has taken its
    lease away, so the park after it is fenced off."""

    name = "fails_twice"
    first_failed: ClassVar[threading.Event] = threading.Event()
    lease_taken: ClassVar[threading.Event] = threading.Event()
    calls = 0

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        type(self).calls += 1
        if type(self).calls == 1:
            type(self).first_failed.set()
        else:
            assert type(self).lease_taken.wait(60), "the test never took the lease"
        raise RuntimeError(f"order {event.originator_id} cannot be projected")


def parked_counter(name: str) -> float:
    labels = {"kind": "projection", "consumer": name, "reason": "failed"}
    return REGISTRY.get_sample_value("eventkit_dead_letters_parked_total", labels) or 0.0


def one_order_and_a_follower(
    projection: Projection, app_env: dict[str, str], database_url: str, schema: str
) -> tuple[UUID, Follower]:
    """One placed order in the test's schema, and a follower of ``projection`` that tries
    a failing event twice and holds its lease for a minute (so it does not renew, and find
    the lease gone, during a retry)."""
    shop = Shop(app_env)
    stock_up(shop)
    (order,) = place(shop, 1)
    pool, url = shared_pool(settings_for(database_url, schema))
    options = FollowerOptions(
        url=url,
        recorder=PostgresEventRecorder(pool, schema),
        worker_id="test",
        retry=RetryPolicy(max_attempts=2, first_delay_s=0.01, max_delay_s=0.01),
        poll=FAST_POLL,
        lease_ttl_s=60.0,
    )
    applier = ProjectionApplier(projection, schema, mapper=PydanticMapper())
    return order, Follower(projection.name, applier, Partition("stream", 1, 0), options)


def listed_dead_letters(
    database_url: str,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> list[str]:
    """What ``eventkit dlq list --all`` prints for the test's schema, line by line."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    capsys.readouterr()
    assert eventkit(["dlq", "list", "--all"]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_a_park_fenced_off_by_a_lost_lease_is_neither_logged_nor_counted(
    app_env: dict[str, str],
    database_url: str,
    schema: str,
    pool: psycopg_pool.ConnectionPool,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FailsTwice.calls = 0
    FailsTwice.first_failed.clear()
    FailsTwice.lease_taken.clear()
    _, follower = one_order_and_a_follower(FailsTwice(), app_env, database_url, schema)
    before = parked_counter(FailsTwice.name)
    caplog.set_level(logging.INFO)
    with running(follower):
        try:
            wait_for(FailsTwice.first_failed.is_set, "the first failed try")
            # Another worker takes the partition over (as after this one was paused past
            # its lease), while this one waits to try the event again.
            with pool.connection() as conn:
                taken = conn.execute(
                    sql.SQL(
                        "UPDATE {} SET owner = 'usurper', generation = nextval({}),"
                        " expires_at = clock_timestamp() + interval '1 hour'"
                        " WHERE consumer = %s AND partition = 0"
                    ).format(
                        sql.Identifier(schema, "leases"),
                        sql.Literal(f"{schema}.lease_generation"),
                    ),
                    (FailsTwice.name,),
                )
                assert taken.rowcount == 1
        finally:
            FailsTwice.lease_taken.set()
        wait_for(
            lambda: any("not committing" in r.getMessage() for r in caplog.records),
            "the follower to find its lease gone",
        )
    messages = [r.getMessage() for r in caplog.records]
    assert FailsTwice.calls == 2
    assert not [m for m in messages if "as dead letter" in m]
    assert any("were not parked" in m and "lost its lease" in m for m in messages)
    assert parked_counter(FailsTwice.name) == before
    assert listed_dead_letters(database_url, schema, monkeypatch, capsys) == ["no dead letters"]


class Undecided(Projection):
    """Fails on every placed order: parked after its tries, and reported once stored."""

    name = "undecided"

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        raise RuntimeError(f"order {event.originator_id} cannot be projected")


def test_a_committed_park_is_logged_and_counted_once(
    app_env: dict[str, str],
    database_url: str,
    schema: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order, follower = one_order_and_a_follower(Undecided(), app_env, database_url, schema)
    before = parked_counter(Undecided.name)
    caplog.set_level(logging.INFO)
    with running(follower):
        wait_for(
            lambda: any("as dead letter" in r.getMessage() for r in caplog.records),
            "the park to be reported",
        )
    assert parked_counter(Undecided.name) == before + 1
    [listed] = listed_dead_letters(database_url, schema, monkeypatch, capsys)
    assert str(order) in listed

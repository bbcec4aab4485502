"""Snapshots on a real PostgreSQL: eventsourcing's settings, exact round trips, stable names,
stale class versions ignored, and errors that name the attribute or the stream."""

from __future__ import annotations

import enum
import json
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID, uuid4

import psycopg_pool
import pytest
from eventsourcing.domain import event
from psycopg import sql

from eventkit.domain.application import Application
from eventkit.domain.model import Aggregate, Immutable
from eventkit.domain.snapshots import Snapshot, SnapshotError, SnapshotStore


class Tier(enum.Enum):
    GOLD = "gold"
    SILVER = "silver"


class Money(Immutable):
    amount: Decimal
    currency: str


class Ledger(Aggregate, type_name="tests.SnapshotLedger"):
    """A long-lived aggregate with state of every kind that must round-trip exactly."""

    owner: str
    balance: Money
    opened_at: datetime
    tier: Tier
    holds: dict[UUID, Decimal]
    tags: tuple[str, ...]
    entries: int
    LIMIT: ClassVar[int] = 10

    class Opened(Aggregate.Created):
        owner: str
        currency: str
        opened_at: datetime

    class Credited(Aggregate.Event):
        amount: Decimal

    class Held(Aggregate.Event):
        hold_id: UUID
        amount: Decimal

    @event(Opened)
    def __init__(self, owner: str, currency: str, opened_at: datetime) -> None:
        self.owner = owner
        self.balance = Money(amount=Decimal("0.00"), currency=currency)
        self.opened_at = opened_at
        self.tier = Tier.SILVER
        self.holds = {}
        self.tags = ("new",)
        self.entries = 0

    @event(Credited)
    def credit(self, amount: Decimal) -> None:
        self.balance = Money(amount=self.balance.amount + amount, currency=self.balance.currency)
        self.entries += 1
        if self.balance.amount > 100:
            self.tier = Tier.GOLD

    @event(Held)
    def hold(self, hold_id: UUID, amount: Decimal) -> None:
        self.holds[hold_id] = amount


class Loose(Aggregate, type_name="tests.SnapshotLoose"):
    """An aggregate with an attribute it does not declare."""

    class Made(Aggregate.Created):
        pass

    @event(Made)
    def __init__(self) -> None:
        self.undeclared = Decimal("1.5")


class Ledgers(Application):
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Ledger: 5}
    cached_kinds = (Ledger,)


class OnDemand(Application):
    is_snapshotting_enabled = True


def opened(app: Application) -> Ledger:
    ledger = Ledger(
        owner="Ada",
        currency="EUR",
        opened_at=datetime(2026, 12, 3, 10, 30, tzinfo=timezone(timedelta(hours=2))),
    )
    app.save(ledger)
    return ledger


def snapshot_rows(pool: psycopg_pool.ConnectionPool, schema: str) -> list[tuple[Any, ...]]:
    with pool.connection() as conn:
        return conn.execute(
            sql.SQL(
                "SELECT originator_version, topic, state->>'topic', state->'state' "
                "FROM {} ORDER BY originator_version"
            ).format(sql.Identifier(schema, "snapshots_json"))
        ).fetchall()


def edit_snapshots(
    pool: psycopg_pool.ConnectionPool, schema: str, path: str, value: object
) -> None:
    """Set the JSON value at ``path`` (``{state,entries}``) in every stored snapshot."""
    with pool.connection() as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET state = convert_to(jsonb_set(convert_from(state, 'UTF8')::jsonb,"
                " %s, %s::jsonb)::text, 'UTF8')"
            ).format(sql.Identifier(schema, "snapshots")),
            (path, json.dumps(value)),
        )


def set_snapshot_entries(pool: psycopg_pool.ConnectionPool, schema: str, entries: int) -> None:
    """Change what the stored snapshots say, so a load shows whether it used one."""
    edit_snapshots(pool, schema, "{state,entries}", entries)


def test_snapshots_are_taken_every_interval_under_stable_names(
    app_env: dict[str, str], pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    app = Ledgers(env=app_env)
    ledger = opened(app)
    for i in range(11):
        ledger.credit(amount=Decimal("10.10"))
        if i % 3 == 0:
            app.save(ledger)
    app.save(ledger)
    assert ledger.version == 12
    rows = snapshot_rows(pool, schema)
    # Saves ended at versions 2, 5, 8, 11 and 12: eventsourcing snapshots the events whose
    # version is a multiple of the interval, whichever save wrote them.
    assert [r[0] for r in rows] == [5, 10]
    assert {r[1] for r in rows} == {"eventkit.Snapshot"}
    assert {r[2] for r in rows} == {"tests.SnapshotLedger"}
    state = rows[-1][3]
    assert state["balance"] == {"amount": "90.90", "currency": "EUR"}
    assert state["opened_at"] == "2026-12-03T10:30:00+02:00"
    assert "_pending_events" not in state
    assert "_id" not in state


def test_a_snapshot_round_trips_the_state_exactly(app_env: dict[str, str]) -> None:
    app = OnDemand(env=app_env)
    ledger = opened(app)
    hold_id = uuid4()
    ledger.credit(amount=Decimal("100.10"))
    ledger.hold(hold_id=hold_id, amount=Decimal("5.50"))
    app.save(ledger)
    app.take_snapshot(ledger.id)

    snapshots = app.snapshots
    assert isinstance(snapshots, SnapshotStore)
    snapshot = snapshots.latest(ledger.id)
    assert isinstance(snapshot, Snapshot)
    assert snapshot.originator_version == 3
    loaded = app.repository.get(ledger.id)
    assert isinstance(loaded, Ledger)
    assert loaded.version == 3
    assert loaded.balance == Money(amount=Decimal("100.10"), currency="EUR")
    assert str(loaded.balance.amount) == "100.10"
    assert loaded.opened_at.utcoffset() == timedelta(hours=2)
    assert loaded.opened_at == ledger.opened_at
    assert loaded.tier is Tier.GOLD
    assert loaded.holds == {hold_id: Decimal("5.50")}
    assert isinstance(next(iter(loaded.holds)), UUID)
    assert loaded.tags == ("new",)
    assert loaded.created_on == ledger.created_on
    assert loaded.modified_on == ledger.modified_on
    assert vars(loaded) == {**vars(ledger), "_pending_events": []}


def test_loading_reads_the_snapshot_and_the_events_after_it(
    app_env: dict[str, str], pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    app = Ledgers(env=app_env)
    ledger = opened(app)
    for _ in range(6):
        ledger.credit(amount=Decimal("1.00"))
    app.save(ledger)  # versions 2..7: a snapshot at 5
    set_snapshot_entries(pool, schema, 1000)
    # Only the snapshot says 1000; the two credits after it add theirs.
    loaded = app.repository.get(ledger.id)
    assert loaded.entries == 1002
    found = app.find(ledger.id, Ledger)  # a cached kind: its first load uses the snapshot
    assert found is not None
    assert found.entries == 1002
    assert OnDemand(env=app_env).find(ledger.id, Ledger).entries == 1002  # type: ignore[union-attr]
    historical = app.repository.get(ledger.id, version=4)  # before the snapshot
    assert historical.entries == 3


def test_a_snapshot_of_another_class_version_is_ignored(
    app_env: dict[str, str],
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = OnDemand(env=app_env)
    ledger = opened(app)
    ledger.credit(amount=Decimal("1.00"))
    app.save(ledger)
    app.take_snapshot(ledger.id)
    set_snapshot_entries(pool, schema, 1000)
    assert app.repository.get(ledger.id).entries == 1000

    monkeypatch.setattr(Ledger, "class_version", 2, raising=False)
    assert app.repository.get(ledger.id).entries == 1  # rebuilt from the events
    assert app.find(ledger.id, Ledger).entries == 1  # type: ignore[union-attr]
    app.take_snapshot(ledger.id)  # replaces the stale one at the same version
    rows = snapshot_rows(pool, schema)
    assert [(r[0], r[3]["class_version"], r[3]["entries"]) for r in rows] == [(2, 2, 1)]
    assert app.repository.get(ledger.id).entries == 1


def test_an_undeclared_attribute_is_refused_by_name(app_env: dict[str, str]) -> None:
    app = OnDemand(env=app_env)
    loose = Loose()
    app.save(loose)
    with pytest.raises(SnapshotError) as raised:
        app.take_snapshot(loose.id)
    message = str(raised.value)
    assert f"tests.SnapshotLoose {loose.id} version 1" in message
    assert "attribute 'undeclared' is not declared" in message


def test_a_snapshot_that_no_longer_validates_names_its_stream(
    app_env: dict[str, str], pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    app = OnDemand(env=app_env)
    ledger = opened(app)
    app.take_snapshot(ledger.id)
    edit_snapshots(pool, schema, "{state,entries}", "many")
    with pytest.raises(SnapshotError) as raised:
        app.repository.get(ledger.id)
    message = str(raised.value)
    assert f"tests.SnapshotLedger {ledger.id} version 1" in message
    assert "entries" in message
    assert "class_version" in message


def test_a_snapshot_never_imports_what_it_names(
    app_env: dict[str, str], pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    app = OnDemand(env=app_env)
    ledger = opened(app)
    app.take_snapshot(ledger.id)
    edit_snapshots(pool, schema, "{topic}", "antigravity:Fly")
    with pytest.raises(SnapshotError, match="antigravity:Fly"):
        app.repository.get(ledger.id)
    assert "antigravity" not in sys.modules


def test_snapshots_work_on_eventsourcings_in_memory_recorder(
    eventkit_memory_env: dict[str, str],
) -> None:
    app = Ledgers(env=eventkit_memory_env)
    ledger = opened(app)
    for _ in range(4):
        ledger.credit(amount=Decimal("2.25"))
    app.save(ledger)
    assert app.snapshots is not None
    snapshot = next(app.snapshots.get(ledger.id, desc=True, limit=1))
    assert snapshot.originator_version == 5
    assert app.repository.get(ledger.id).balance.amount == Decimal("9.00")


def test_snapshots_are_stamped_with_an_aware_time(app_env: dict[str, str]) -> None:
    app = OnDemand(env=app_env)
    ledger = opened(app)
    before = datetime.now(UTC)
    app.take_snapshot(ledger.id)
    assert isinstance(app.snapshots, SnapshotStore)
    snapshot = app.snapshots.latest(ledger.id)
    assert snapshot is not None
    assert snapshot.timestamp >= before

"""The recorder on a real PostgreSQL: appends, conflicts, batch sizes, reads and recovery."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import psycopg
import psycopg_pool
import pytest
from eventsourcing.application import Application
from eventsourcing.domain import event
from eventsourcing.persistence import IntegrityError, StoredEvent
from psycopg import sql

from eventkit.domain.model import Aggregate
from eventkit.infrastructure.errors import (
    ConcurrencyError,
    EventEncodingError,
)
from eventkit.infrastructure.factory import event_recorder
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.recorder import COPY_THRESHOLD, PostgresEventRecorder
from tests.integration.log_support import wait_until_readable


def events(stream: UUID, first: int, count: int, topic: str = "Tested") -> list[StoredEvent]:
    return [
        StoredEvent(stream, v, topic, json.dumps({"v": v}).encode())
        for v in range(first, first + count)
    ]


def count_rows(pool: psycopg_pool.ConnectionPool, schema: str) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "stored_events"))
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("size", [1, COPY_THRESHOLD, COPY_THRESHOLD + 1, 5_000, 20_000])
def test_any_batch_size_is_appended_in_order(recorder: PostgresEventRecorder, size: int) -> None:
    stream = uuid4()
    ids = recorder.insert_events(events(stream, 1, size))
    assert len(ids) == len(set(ids)) == size
    stored = recorder.select_events(stream)
    assert [e.originator_version for e in stored] == list(range(1, size + 1))
    wait_until_readable(recorder)
    logged = []
    position = Position.ORIGIN
    while batch := recorder.read_notifications(position, 7_000):
        logged.extend(batch)
        position = batch[-1].position
    assert [n.id for n in logged] == ids
    assert [n.originator_version for n in logged] == list(range(1, size + 1))


@pytest.mark.parametrize("size", [1, COPY_THRESHOLD + 10])
def test_a_conflicting_append_names_the_stream_and_versions_and_writes_nothing(
    recorder: PostgresEventRecorder, pool: psycopg_pool.ConnectionPool, schema: str, size: int
) -> None:
    stream, bystander = uuid4(), uuid4()
    recorder.insert_events(events(stream, 1, 3))
    before = count_rows(pool, schema)

    with pytest.raises(ConcurrencyError) as raised:
        # A bystander stream in the same save is not written either.
        recorder.insert_events(events(bystander, 1, 2) + events(stream, 3, size))

    error = raised.value
    assert isinstance(error, IntegrityError)  # what eventsourcing's Application expects
    assert error.originator_id == str(stream)
    assert error.conflicting_version == 3
    assert error.current_version == 3
    assert error.appended_versions == (3, 2 + size)
    assert str(stream) in str(error)
    assert "version 3 is already recorded" in str(error)
    assert count_rows(pool, schema) == before
    assert recorder.select_events(bystander) == []


@pytest.fixture
def rls_recorder(
    pool: psycopg_pool.ConnectionPool, database_url: str, schema: str
) -> Iterator[PostgresEventRecorder]:
    """A recorder connected as a role under row-level security on the log: the server then
    leaves DETAIL (which names the duplicate key) out of a unique violation."""
    role = f"eventkit_rls_{uuid4().hex[:8]}"
    with pool.connection() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for statement in (
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA {schema} TO {role}",
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
            "ALTER TABLE {schema}.stored_events ENABLE ROW LEVEL SECURITY",
            "CREATE POLICY everything ON {schema}.stored_events USING (true) WITH CHECK (true)",
        ):
            conn.execute(
                sql.SQL(statement).format(  # type: ignore[arg-type]
                    schema=sql.Identifier(schema), role=sql.Identifier(role)
                )
            )
    rls_pool = psycopg_pool.ConnectionPool(
        database_url,
        kwargs={"autocommit": True, "options": f"-c role={role}"},
        min_size=1,
        max_size=2,
        open=True,
    )
    try:
        yield PostgresEventRecorder(rls_pool, schema)
    finally:
        rls_pool.close()
        with pool.connection() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_conflict_is_recognised_without_the_servers_detail(
    rls_recorder: PostgresEventRecorder, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    stream = uuid4()
    rls_recorder.insert_events(events(stream, 1, 2))
    # The server's own words for the same violation: no DETAIL under row-level security.
    with (
        pytest.raises(psycopg.errors.UniqueViolation) as raw,
        rls_recorder.pool.connection() as conn,
    ):
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (originator_id, originator_version, topic, state)"
                " VALUES (%s, 2, 'Tested', '')"
            ).format(sql.Identifier(schema, "stored_events")),
            (stream,),
        )
    assert raw.value.diag.message_detail is None
    assert raw.value.diag.constraint_name == "stored_events_pkey"
    with pytest.raises(ConcurrencyError) as raised:
        rls_recorder.insert_events(events(stream, 2, 3))
    error = raised.value
    assert error.originator_id == str(stream)
    assert error.conflicting_version == 2
    assert error.current_version == 2
    assert error.appended_versions == (2, 4)


def test_a_duplicate_inside_one_save_is_a_conflict(recorder: PostgresEventRecorder) -> None:
    stream = uuid4()
    with pytest.raises(ConcurrencyError, match="has no events"):
        recorder.insert_events(events(stream, 1, 1) + events(stream, 1, 1))


def test_stream_ids_must_be_uuids(recorder: PostgresEventRecorder) -> None:
    with pytest.raises(EventEncodingError, match="'order-17'"):
        recorder.insert_events([StoredEvent("order-17", 1, "Tested", b"{}")])


def test_reads_filter_by_event_type(recorder: PostgresEventRecorder) -> None:
    stream = uuid4()
    recorder.insert_events(
        events(stream, 1, 1, "Placed")
        + events(stream, 2, 1, "Paid")
        + events(stream, 3, 1, "Shipped")
    )
    wait_until_readable(recorder)
    got = recorder.read_notifications(Position.ORIGIN, 10, topics=["Placed", "Shipped"])
    assert [n.topic for n in got] == ["Placed", "Shipped"]


def test_each_event_carries_its_topic_and_recorded_time_in_sql(
    recorder: PostgresEventRecorder, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    before = datetime.now(UTC)
    stream = uuid4()
    recorder.insert_events(events(stream, 1, 1, "Placed"))
    wait_until_readable(recorder)
    [logged] = recorder.read_notifications(Position.ORIGIN, 10)
    assert before - timedelta(seconds=5) <= logged.recorded_at <= datetime.now(UTC)
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT topic, state->>'v', now() - recorded_at < interval '1 minute' FROM {} "
                "WHERE originator_id = %s"
            ).format(sql.Identifier(schema, "stored_events_json")),
            (stream,),
        ).fetchone()
    assert row == ("Placed", "1", True)


def test_the_json_views_show_every_row_when_one_payload_is_not_json(
    recorder: PostgresEventRecorder, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    """Issue 17 point 7: one stored payload that is not UTF-8 JSON made every query of
    stored_events_json that reached it fail; now it reads as NULL with payload_error."""
    stream = uuid4()
    bad = {2: b"{not json", 3: b'{"v": "\xff"}', 4: b'"\\u0000"'}
    recorder.insert_events(
        [
            *events(stream, 1, 1),
            *(StoredEvent(stream, v, "Tested", state) for v, state in bad.items()),
            *events(stream, 5, 1),
        ]
    )
    with pool.connection() as conn:
        conn.execute(  # the same payloads as snapshots
            sql.SQL(
                "INSERT INTO {} (originator_id, originator_version, topic, state)"
                " SELECT originator_id, originator_version, topic, state FROM {}"
                " WHERE originator_id = %s"
            ).format(sql.Identifier(schema, "snapshots"), sql.Identifier(schema, "stored_events")),
            (stream,),
        )
        for view in ("stored_events_json", "snapshots_json"):
            rows = conn.execute(
                sql.SQL(
                    "SELECT originator_version, state->>'v', payload_error FROM {}"
                    " WHERE originator_id = %s ORDER BY originator_version"
                ).format(sql.Identifier(schema, view)),
                (stream,),
            ).fetchall()
            assert [r[:2] for r in rows] == [(1, "1"), (2, None), (3, None), (4, None), (5, "5")]
            errors = [r[2] for r in rows]
            assert [e is None for e in errors] == [True, False, False, False, True]
            assert "json" in errors[1]
            assert "UTF8" in errors[2]
            assert "Unicode" in errors[3]


def test_head_and_position_of(recorder: PostgresEventRecorder) -> None:
    assert recorder.head() is None
    [a, b] = recorder.insert_events(events(uuid4(), 1, 2))
    head = recorder.head()
    assert head is not None
    assert head.notification_id == b
    position = recorder.position_of(a)
    assert position is not None
    assert position.notification_id == a
    assert position.transaction_id == head.transaction_id
    assert recorder.position_of(10**12) is None


def test_last_recorded_counts_events_an_open_older_transaction_holds_back(
    recorder: PostgresEventRecorder, database_url: str, schema: str
) -> None:
    """The readable head stops below an open transaction that is older than the last
    append and may still write to the log (here one that holds the log's write lock, as a
    writer between its first insert and its commit does); the last recorded position does
    not. Waiting for the head alone can end before a follower has seen the last event.
    (A transaction that cannot write to the log holds the head back only for the first
    10 ms: tests/integration/test_log_writers.py.)"""
    [first] = recorder.insert_events(events(uuid4(), 1, 1))
    with psycopg.connect(database_url, autocommit=True) as other, other.transaction():
        log = sql.Identifier(schema, "stored_events")
        other.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(log))
        other.execute("SELECT pg_current_xact_id()")  # takes a transaction id, stays open
        [last] = recorder.insert_events(events(uuid4(), 1, 1))
        head, recorded = recorder.head(), recorder.last_recorded()
        assert head is not None
        assert head.notification_id == first
        assert recorded is not None
        assert recorded.notification_id == last
    assert recorder.head() == recorder.last_recorded() == recorded


def test_positions_print_and_parse() -> None:
    assert Position.parse(str(Position(12, 34))) == Position(12, 34)
    with pytest.raises(ValueError, match="TRANSACTION_ID/NOTIFICATION_ID"):
        Position.parse("34")


def test_appends_survive_killed_connections(
    recorder: PostgresEventRecorder, pool: psycopg_pool.ConnectionPool
) -> None:
    """All the pool's connections die (a restart, a failover): the next append still lands."""
    stream = uuid4()
    recorder.insert_events(events(stream, 1, 1))
    with pool.connection() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name = 'eventkit'"
        )
    ids = recorder.insert_events(events(stream, 2, 2))
    assert len(ids) == 2
    assert [e.originator_version for e in recorder.select_events(stream)] == [1, 2, 3]


def test_an_interrupted_append_is_recognised_when_it_did_commit(
    recorder: PostgresEventRecorder,
) -> None:
    stream = uuid4()
    appended = events(stream, 1, 3)
    ids = recorder.insert_events(appended)
    rows = [(stream, e.originator_version, e.topic, e.state) for e in appended]
    assert recorder._find_appended(rows) == ids
    assert recorder._find_appended([(uuid4(), 1, "Tested", b"{}")]) is None
    changed = [(stream, 1, "Tested", b'{"v": "other"}')]
    with pytest.raises(ConcurrencyError, match=f"stream {stream}: version 1 is already"):
        recorder._find_appended(changed)


def test_an_append_cut_off_while_another_writer_takes_its_version_is_a_conflict(
    recorder: PostgresEventRecorder, pool: psycopg_pool.ConnectionPool, database_url: str
) -> None:
    """Issue 17 point 7: our append waits behind another writer's uncommitted row of the
    same version; its connection is lost, and the other writer commits at once. The
    outcome is known (the other writer's content is there, so ours did not commit): a
    plain ConcurrencyError, which the application retries, never AppendOutcomeUnknownError."""
    stream = uuid4()
    table = sql.Identifier(recorder.schema, "stored_events")
    outcome: list[BaseException | list[int]] = []

    def append() -> None:
        try:
            outcome.append(recorder.insert_events(events(stream, 1, 1)))
        except BaseException as e:
            outcome.append(e)

    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("BEGIN")
        other.execute("SET LOCAL synchronous_commit = off")  # its COMMIT waits for no disk
        other.execute(
            sql.SQL(
                "INSERT INTO {} (originator_id, originator_version, topic, state) "
                "VALUES (%s, 1, 'Other', '{{}}')"
            ).format(table),
            (stream,),
        )
        writer = threading.Thread(target=append)
        writer.start()
        deadline = time.monotonic() + 30
        while True:
            with pool.connection() as conn:
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND query LIKE %s",
                    (f"%{recorder.schema}%stored_events%",),
                ).fetchone()
            if row is not None:
                break
            assert time.monotonic() < deadline, "the append never waited for the lock"
            time.sleep(0.01)
        # One simple query: the kill and the commit reach the server together.
        other.execute(f"SELECT pg_terminate_backend({int(row[0])}); COMMIT")  # type: ignore[arg-type]
        writer.join(30)
    [result] = outcome
    assert isinstance(result, ConcurrencyError), result
    assert f"stream {stream}: version 1 is already recorded" in str(result)
    assert [e.topic for e in recorder.select_events(stream)] == ["Other"]


def test_a_deadlock_with_a_writer_of_the_same_streams_is_a_plain_conflict(
    recorder: PostgresEventRecorder, database_url: str, schema: str
) -> None:
    """Two saves insert the same (stream, version) keys in opposite orders and deadlock.

    The server rolls our save back: that is neither a lost connection nor "another content
    was found", but a conflict once the other writer commits.
    """
    first, second = uuid4(), uuid4()
    table = sql.Identifier(schema, "stored_events")

    def insert(stream: UUID) -> sql.Composed:
        return sql.SQL(
            "INSERT INTO {} (originator_id, originator_version, topic, state) "
            "VALUES ({}, 1, 'Other', '{{}}')"
        ).format(table, sql.Literal(stream))

    outcome: list[BaseException | list[int]] = []

    def save() -> None:
        try:
            outcome.append(recorder.insert_events(events(second, 1, 1) + events(first, 1, 1)))
        except BaseException as e:
            outcome.append(e)

    # The watcher has its own session: within the other writer's open transaction,
    # pg_stat_activity is read once and cached until that transaction ends, so polling there
    # never sees a wait that begins after the first poll.
    with (
        psycopg.connect(database_url, autocommit=True) as other,
        psycopg.connect(database_url, autocommit=True) as watcher,
    ):
        # This session must not be the deadlock's victim: ours detects it first.
        other.execute("SET deadlock_timeout = '60s'")
        other.execute("BEGIN")
        other.execute(insert(first))
        writer = threading.Thread(target=save)
        writer.start()
        waiting = sql.SQL(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND application_name = 'eventkit' AND query LIKE %s"
        )
        # A condition, not a time window: on a loaded machine the writer thread may take
        # long to get there; the deadline only stops a test that would hang.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and writer.is_alive():
            row = watcher.execute(waiting, (f"%{schema}%",)).fetchone()
            if row is not None and row[0] > 0:
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"the recorder's save never waited on the other writer's row: {outcome}")
        # Sent as one message, so the other writer commits the moment the deadlock check
        # rolls ours back, before our save can look at what is there.
        other.execute(sql.SQL("{}; COMMIT").format(insert(second)))
        writer.join(timeout=30)
    assert len(outcome) == 1
    error = outcome[0]
    assert isinstance(error, ConcurrencyError), error
    assert error.originator_id in {str(first), str(second)}
    assert [e.topic for e in recorder.select_events(first)] == ["Other"]
    assert [e.topic for e in recorder.select_events(second)] == ["Other"]


# -- through eventsourcing's Application --------------------------------------------------


class Account(Aggregate, type_name="tests.Account"):
    class Opened(Aggregate.Created):
        owner: str

    @event(Opened)
    def __init__(self, owner: str) -> None:
        self.balance = Decimal(0)

    class Credited(Aggregate.Event):
        amount: Decimal

    @event(Credited)
    def credit(self, amount: Decimal) -> None:
        self.balance += amount


def test_application_save_and_get_work_unchanged(app_env: dict[str, str]) -> None:
    app: Application[UUID] = Application(env=app_env)
    account = Account(owner="ada")
    account.credit(amount=Decimal("10.05"))
    recordings = app.save(account)
    assert [r.notification.id for r in recordings] == sorted(r.notification.id for r in recordings)
    loaded = app.repository.get(account.id)
    assert loaded.balance == Decimal("10.05")
    assert loaded.version == 2


def test_a_save_of_several_aggregates_is_atomic(app_env: dict[str, str]) -> None:
    app: Application[UUID] = Application(env=app_env)
    first, second = Account(owner="a"), Account(owner="b")
    app.save(first, second)
    stale = app.repository.get(second.id)
    second.credit(amount=Decimal(1))
    app.save(second)

    first.credit(amount=Decimal(5))
    stale.credit(amount=Decimal(7))
    with pytest.raises(ConcurrencyError, match=str(second.id)):
        app.save(first, stale)
    assert app.repository.get(first.id).balance == Decimal(0)
    assert event_recorder(app).select_events(first.id, gt=1) == []

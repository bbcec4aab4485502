"""Idempotent appends on a real PostgreSQL: a command retried with its idempotency key after
a lost connection or a client's timeout stores its events once and gets the first outcome;
another command on the same version still conflicts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID, uuid4

import psycopg
import psycopg_pool
import pytest
from eventsourcing.domain import event
from eventsourcing.persistence import IntegrityError, StoredEvent
from psycopg import sql

from eventkit.domain.application import AlreadyRecordedError, Application, Outcome
from eventkit.domain.model import Aggregate
from eventkit.infrastructure.factory import event_recorder
from eventkit.infrastructure.recorder import COPY_THRESHOLD, PostgresEventRecorder
from tests.integration.cutting_proxy import CuttingProxy, cutting_proxy


class Tally(Aggregate, type_name="tests.IdempotentTally"):
    class Started(Aggregate.Created):
        pass

    class Counted(Aggregate.Event):
        n: int

    @event(Started)
    def __init__(self) -> None:
        self.total = 0

    @event(Counted)
    def count(self, n: int) -> None:
        self.total += n


class Tallies(Application):
    pass


def events(stream: UUID, first: int, count: int) -> list[StoredEvent]:
    return [
        StoredEvent(stream, v, "Tested", json.dumps({"v": v}).encode())
        for v in range(first, first + count)
    ]


def stored_versions(pool: psycopg_pool.ConnectionPool, schema: str, stream: UUID) -> list[int]:
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT originator_version FROM {} WHERE originator_id = %s "
                "ORDER BY originator_version"
            ).format(sql.Identifier(schema, "stored_events")),
            (stream,),
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def proxy(database_url: str) -> Iterator[CuttingProxy]:
    with cutting_proxy(database_url) as proxy:
        yield proxy


@pytest.fixture
def proxied_pool(proxy: CuttingProxy) -> Iterator[psycopg_pool.ConnectionPool]:
    pool = psycopg_pool.ConnectionPool(
        proxy.url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    pool.open(wait=True, timeout=30)
    yield pool
    pool.close()


@pytest.mark.parametrize("size", [2, COPY_THRESHOLD + 1])
def test_a_retry_after_a_lost_connection_appends_once(
    proxy: CuttingProxy,
    proxied_pool: psycopg_pool.ConnectionPool,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    size: int,
) -> None:
    recorder = PostgresEventRecorder(proxied_pool, schema)
    stream = uuid4()
    recorder.insert_events(events(uuid4(), 1, 1))  # the connection's statements prepared
    proxy.arm()
    ids = recorder.insert_events(events(stream, 1, size), idempotency_key="cmd-1")
    assert proxy.cut.is_set()  # the answer was lost after the commit
    assert stored_versions(pool, schema, stream) == list(range(1, size + 1))
    assert recorder.appended_with("cmd-1") == ids
    assert [n.originator_version for n in recorder.notifications(ids)] == list(range(1, size + 1))
    # The client, not knowing, sends the command again: nothing more is stored.
    with pytest.raises(AlreadyRecordedError) as raised:
        recorder.insert_events(events(stream, 1, size), idempotency_key="cmd-1")
    assert raised.value.notification_ids == ids
    assert stored_versions(pool, schema, stream) == list(range(1, size + 1))


def test_a_command_retried_after_a_lost_connection_returns_the_first_outcome(
    app_env: dict[str, str],
    proxy: CuttingProxy,
    proxied_pool: psycopg_pool.ConnectionPool,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
) -> None:
    app = Tallies(env=app_env)
    tally = Tally()
    app.save(tally)
    event_recorder(app).pool = proxied_pool  # appends now go through the proxy
    decided = []

    def count() -> tuple[Tally]:
        decided.append(1)
        loaded = app.repository.get(tally.id)
        loaded.count(n=5)
        return (loaded,)

    # Past run's look-up of the key and decide's load, the append's answer is lost.
    proxy.arm(skip=2)
    first = app.run(count, "count 5", idempotency_key="request-42")
    assert proxy.cut.is_set()
    assert not first.repeated
    again = app.run(count, "count 5", idempotency_key="request-42")
    assert again.repeated
    assert again.notification_ids == first.notification_ids
    assert len(decided) == 1  # the retry did not decide again
    assert isinstance(again.recordings[0].domain_event, Tally.Counted)
    assert stored_versions(pool, schema, tally.id) == [1, 2]
    assert app.repository.get(tally.id).total == 5


def wait_for_lock_waiters(database_url: str, n: int) -> None:
    """Until ``n`` backends wait on a lock (the appends queued behind the test's lock)."""
    deadline = time.monotonic() + 120  # a safety net only: the condition ends the wait
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ).fetchone()
            if row is not None and row[0] >= n:
                return
            time.sleep(0.01)
    raise AssertionError(f"{n} appends never queued behind the lock")


def test_a_command_retried_after_a_client_timeout_is_stored_once(
    app_env: dict[str, str], database_url: str, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    app = Tallies(env=app_env)
    tally = Tally()
    app.save(tally)

    def count() -> tuple[Tally]:
        loaded = app.repository.get(tally.id)
        loaded.count(n=7)
        return (loaded,)

    def send() -> Outcome[tuple[Tally]]:
        return app.run(count, "count 7", idempotency_key="request-7")

    with ThreadPoolExecutor(2) as clients, psycopg.connect(database_url) as locker:
        # The server is slow to take the append (a lock held elsewhere), so the client's
        # wait times out and it sends the command again; the first is still on its way.
        locker.execute(
            sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                sql.Identifier(schema, "idempotency_keys")
            )
        )
        first = clients.submit(send)
        wait_for_lock_waiters(database_url, 1)
        with pytest.raises(TimeoutError):
            first.result(timeout=0.01)  # the client gives up waiting
        retry = clients.submit(send)
        wait_for_lock_waiters(database_url, 2)
        locker.commit()
        outcomes = [first.result(), retry.result()]
    assert sorted(o.repeated for o in outcomes) == [False, True]
    assert outcomes[0].notification_ids == outcomes[1].notification_ids
    assert stored_versions(pool, schema, tally.id) == [1, 2]
    assert app.repository.get(tally.id).total == 7


def test_another_command_on_the_same_version_still_conflicts(app_env: dict[str, str]) -> None:
    app = Tallies(env=app_env)
    tally = Tally()
    app.save(tally)
    first, second = app.repository.get(tally.id), app.repository.get(tally.id)
    first.count(n=1)
    second.count(n=2)
    app.save(first, idempotency_key="a")
    with pytest.raises(IntegrityError, match=str(tally.id)):
        app.save(second, idempotency_key="b")
    third = app.repository.get(tally.id, version=1)
    third.count(n=3)
    with pytest.raises(IntegrityError):  # no key: conflicts just the same
        app.save(third)


def test_a_save_with_a_used_key_appends_nothing_and_returns_the_first_save(
    app_env: dict[str, str], pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    app = Tallies(env=app_env)
    tally = Tally()
    recordings = app.save(tally, idempotency_key="create-1")
    other = Tally()
    again = app.save(other, idempotency_key="create-1")
    assert [r.notification.id for r in again] == [r.notification.id for r in recordings]
    assert again[0].domain_event.originator_id == tally.id
    assert stored_versions(pool, schema, other.id) == []


def test_keys_are_refused_by_other_recorders(eventkit_memory_env: dict[str, str]) -> None:
    app = Tallies(env=eventkit_memory_env)
    with pytest.raises(TypeError, match="records no idempotency keys"):
        app.run(lambda: (Tally(),), idempotency_key="k")


def test_a_waiting_retry_sees_the_key_once_the_first_commits(
    recorder: PostgresEventRecorder, database_url: str, schema: str
) -> None:
    """Two appends with one key at once: one appends, the other raises with its ids."""
    stream = uuid4()
    results: list[object] = []

    def append(first: int) -> None:
        try:
            results.append(recorder.insert_events(events(stream, first, 1), idempotency_key="k"))
        except AlreadyRecordedError as e:
            results.append(e)

    with psycopg.connect(database_url) as locker:
        locker.execute(
            sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                sql.Identifier(schema, "idempotency_keys")
            )
        )
        threads = [threading.Thread(target=append, args=(v,)) for v in (1, 2)]
        for t in threads:
            t.start()
        wait_for_lock_waiters(database_url, 2)
    for t in threads:
        t.join()
    appended = [r for r in results if isinstance(r, list)]
    refused = [r for r in results if isinstance(r, AlreadyRecordedError)]
    assert len(appended) == 1
    assert len(refused) == 1
    assert refused[0].notification_ids == appended[0]

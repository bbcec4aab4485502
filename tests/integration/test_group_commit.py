"""Group commit on a real server: saves that arrive together append in one transaction, each
with its own outcome (infrastructure/groupcommit.py).

To gather a group deterministically, a first save is held inside the server: another
connection has inserted the same (stream, version) in a transaction left open, so the save's
INSERT waits for that transaction. Saves that arrive meanwhile find a save in flight and
gather in one group, whose leader waits (the tests widen the window) until the held save
ends; then the group appends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from uuid import UUID, uuid4

import psycopg
import psycopg_pool
import pytest
from eventsourcing.persistence import StoredEvent
from psycopg import sql

from eventkit.infrastructure.errors import ConcurrencyError
from eventkit.infrastructure.groupcommit import GroupCommit
from eventkit.infrastructure.recorder import PostgresEventRecorder
from tests.integration.cutting_proxy import CuttingProxy, cutting_proxy
from tests.integration.reaction_support import wait_for
from tests.integration.test_idempotent_appends import wait_for_lock_waiters

#: A window wide enough that a test's group gathers whatever the machine's load.
WIDE_WINDOW_S = 60.0


def events(stream: UUID, first: int, count: int, tag: str = "") -> list[StoredEvent]:
    return [
        StoredEvent(stream, v, "Tested", f'{{"v": {v}, "tag": "{tag}"}}'.encode())
        for v in range(first, first + count)
    ]


def stored(pool: psycopg_pool.ConnectionPool, schema: str) -> dict[tuple[UUID, int], tuple]:
    """Every stored row by (stream, version): its notification id, transaction and state."""
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT originator_id, originator_version, notification_id,"
                " transaction_id::text::bigint, state FROM {}"
            ).format(sql.Identifier(schema, "stored_events"))
        ).fetchall()
    return {(r[0], r[1]): (r[2], r[3], bytes(r[4])) for r in rows}


def grouping(recorder: PostgresEventRecorder) -> GroupCommit[object]:
    group = recorder.group_commit
    assert group is not None
    group.window_s = WIDE_WINDOW_S
    return group  # type: ignore[return-value]


@contextmanager
def held_save(
    database_url: str, recorder: PostgresEventRecorder, executor: ThreadPoolExecutor
) -> Iterator[Future[list[int]]]:
    """A save of the recorder's held inside the server by another connection's open
    transaction (which inserted the same key); roll that back to let the save through."""
    stream = uuid4()
    with psycopg.connect(database_url) as blocker:
        blocker.execute(
            sql.SQL(
                "INSERT INTO {} (originator_id, originator_version, topic, state)"
                " VALUES (%s, 1, 'Blocker', '{{}}')"
            ).format(sql.Identifier(recorder.schema, "stored_events")),
            (stream,),
        )
        held = executor.submit(recorder.insert_events, events(stream, 1, 1, "held"))
        wait_for_lock_waiters(database_url, 1)
        try:
            yield held
        finally:
            blocker.rollback()


Outcome = list[int] | Exception


def grouped(
    recorder: PostgresEventRecorder,
    database_url: str,
    saves: dict[str, list[StoredEvent]],
    before_release: Callable[[], None] = lambda: None,
) -> dict[str, Outcome]:
    """Each save's outcome (its ids or its error), the saves gathered in one group while a
    save is held in flight; ``before_release`` runs once they have gathered."""
    group = grouping(recorder)
    with ThreadPoolExecutor(len(saves) + 2) as executor:
        with held_save(database_url, recorder, executor) as held:
            futures = {
                name: executor.submit(recorder.insert_events, batch)
                for name, batch in saves.items()
            }
            wait_for(lambda: group.gathering == len(saves), "the saves to gather", 60)
            assert not any(f.done() for f in futures.values())  # none went on its own
            before_release()
        held.result(timeout=60)
        return {name: _outcome(future) for name, future in futures.items()}


def _outcome(save: Future[list[int]]) -> Outcome:
    try:
        return save.result(timeout=60)
    except Exception as error:  # the save's own outcome, for the test to compare
        return error


@pytest.fixture
def recorder(pool: psycopg_pool.ConnectionPool, schema: str) -> PostgresEventRecorder:
    return PostgresEventRecorder(pool, schema, group_commit=True)


def test_saves_that_arrive_together_commit_in_one_transaction_with_their_own_ids(
    recorder: PostgresEventRecorder,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
) -> None:
    streams = [uuid4() for _ in range(4)]
    outcomes = grouped(
        recorder,
        database_url,
        {str(s): events(s, 1, n + 1, "grouped") for n, s in enumerate(streams)},
    )
    rows = stored(pool, schema)
    for n, stream in enumerate(streams):
        assert outcomes[str(stream)] == [rows[(stream, v)][0] for v in range(1, n + 2)]
    assert len({rows[(stream, 1)][1] for stream in streams}) == 1  # one transaction
    group = grouping(recorder)
    assert (group.groups, group.grouped_saves) == (1, len(streams))


def test_in_a_group_a_conflicting_save_fails_alone_and_the_others_commit_whole(
    recorder: PostgresEventRecorder,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
) -> None:
    fine, taken, raced = uuid4(), uuid4(), uuid4()
    recorder.insert_events(events(taken, 1, 1, "before"))  # version 1 of `taken` is taken
    outcomes = grouped(
        recorder,
        database_url,
        {
            "fine": events(fine, 1, 2, "fine"),
            # Versions 1 (taken) and 2 (free): nothing of it may be stored.
            "taken": events(taken, 1, 2, "late"),
            # Two saves of the same new version: one commits, the other conflicts.
            "raced a": events(raced, 1, 1, "a"),
            "raced b": events(raced, 1, 1, "b"),
        },
    )

    rows = stored(pool, schema)
    assert outcomes["fine"] == [rows[(fine, 1)][0], rows[(fine, 2)][0]]
    conflict = outcomes["taken"]
    assert isinstance(conflict, ConcurrencyError)
    assert str(taken) in str(conflict)
    assert rows[(taken, 1)][2] == b'{"v": 1, "tag": "before"}'
    assert (taken, 2) not in rows  # nothing partial
    raced_outcomes = [outcomes["raced a"], outcomes["raced b"]]
    winners = [o for o in raced_outcomes if isinstance(o, list)]
    losers = [o for o in raced_outcomes if isinstance(o, ConcurrencyError)]
    assert len(winners) == 1, raced_outcomes
    assert len(losers) == 1, raced_outcomes
    assert winners == [[rows[(raced, 1)][0]]]
    winner = "a" if isinstance(outcomes["raced a"], list) else "b"
    assert rows[(raced, 1)][2] == f'{{"v": 1, "tag": "{winner}"}}'.encode()


def test_a_save_alone_does_not_wait_for_company(recorder: PostgresEventRecorder) -> None:
    group = grouping(recorder)
    started = time.monotonic()
    for v in range(1, 4):
        recorder.insert_events(events(uuid4(), v, 1))
    assert time.monotonic() - started < WIDE_WINDOW_S / 4
    assert group.groups == 0


def test_a_save_waits_for_company_no_longer_than_the_window(
    recorder: PostgresEventRecorder, database_url: str
) -> None:
    group = grouping(recorder)
    group.window_s = 0.05
    with ThreadPoolExecutor(4) as executor:
        with held_save(database_url, recorder, executor) as held:
            # A save in flight (held) makes the next one wait for company, but only for
            # the window: it commits while the held save is still held.
            ids = executor.submit(recorder.insert_events, events(uuid4(), 1, 1)).result(60)
            assert not held.done()
        held.result(timeout=60)
    assert len(ids) == 1
    assert group.groups == 0


@pytest.fixture
def proxy(database_url: str) -> Iterator[CuttingProxy]:
    with cutting_proxy(database_url) as proxy:
        yield proxy


def test_a_group_whose_connection_is_lost_after_its_commit_reports_each_save_appended(
    proxy: CuttingProxy, pool: psycopg_pool.ConnectionPool, schema: str, database_url: str
) -> None:
    proxied = psycopg_pool.ConnectionPool(
        proxy.url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    proxied.open(wait=True, timeout=30)
    try:
        recorder = PostgresEventRecorder(proxied, schema, group_commit=True)
        streams = [uuid4() for _ in range(3)]
        # The held save's answer comes first; the group's INSERT is answered next, after
        # its commit, and that answer is lost with its connection.
        outcomes = grouped(
            recorder,
            database_url,
            {str(s): events(s, 1, 2) for s in streams},
            before_release=lambda: proxy.arm(skip=1),
        )
        assert proxy.cut.is_set()
        rows = stored(pool, schema)
        for stream in streams:
            assert outcomes[str(stream)] == [rows[(stream, 1)][0], rows[(stream, 2)][0]]
        assert len({rows[(s, 1)][1] for s in streams}) == 1  # stored once, in one transaction
        assert grouping(recorder).groups == 0  # the group's leader never got its answer
    finally:
        proxied.close()


def test_group_commit_is_a_setting(app_env: dict[str, str]) -> None:
    from eventkit.domain.application import Application

    for value, on in (("on", True), ("off", False)):
        app = Application(env={**app_env, "EVENTKIT_GROUP_COMMIT": value})
        try:
            recorder = app.recorder
            assert isinstance(recorder, PostgresEventRecorder)
            assert (recorder.group_commit is not None) is on
        finally:
            app.close()

"""Followers wait only for transactions that can still write to the log.

A transaction that wrote anywhere else (another table, another database of the server, a
prepared transaction) is not waited for: a follower reads past it at once. The log refuses
an append from a transaction that already had a transaction id before its first append, so
such a transaction can never become a writer. Writers are still waited for, whatever
their shape (savepoints, COPY, prepared), and ``eventkit status`` names the one that holds
followers back, with the way to end it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import uuid4

import psycopg
import psycopg_pool
import pytest
from psycopg import conninfo, sql

from eventkit.cli import main
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.projections import status as status_module
from eventkit.projections.status import server_warnings
from tests.integration.test_gap_safety import Follower, append_in, event, open_transaction

#: A follower must see an event committed while a foreign transaction is open within this
#: (the horizon's own wait is 10 ms; the rest is a loaded machine's scheduling).
SEEN_WITHIN_S = 10.0


def wait_until_seen(follower: Follower, ids: set[int], what: str) -> float:
    """Poll until ``follower`` has seen ``ids``; return how long that took."""
    started = time.monotonic()
    follower.drain_until_seen(ids, timeout=SEEN_WITHIN_S)
    missing = ids - {n.id for n in follower.seen}
    assert not missing, f"the follower did not read past {what} within {SEEN_WITHIN_S} s"
    return time.monotonic() - started


@contextmanager
def foreign_write(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A transaction that wrote one row to a table of its own and stays open."""
    with open_transaction(url) as conn:
        conn.execute("CREATE TEMPORARY TABLE foreign_work (n integer)")
        conn.execute("INSERT INTO foreign_work VALUES (1)")
        row = conn.execute("SELECT pg_current_xact_id_if_assigned()").fetchone()
        assert row is not None
        assert row[0] is not None  # it holds a transaction id, as the did
        yield conn


def follower_at_head(recorder: PostgresEventRecorder) -> Follower:
    follower = Follower(recorder)
    follower.drain()
    return follower


def test_a_transaction_in_another_table_delays_no_follower(
    recorder: PostgresEventRecorder, database_url: str
) -> None:
    follower = follower_at_head(recorder)
    with foreign_write(database_url) as foreign:
        ids = set(recorder.insert_events([event(uuid4(), 1), event(uuid4(), 1)]))
        wait_until_seen(follower, ids, "a transaction that wrote another table")
        foreign.rollback()


def test_a_transaction_in_another_database_delays_no_follower(
    recorder: PostgresEventRecorder, database_url: str, pool: psycopg_pool.ConnectionPool
) -> None:
    name = f"eventkit_foreign_{uuid4().hex[:8]}"
    with pool.connection() as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test's role may not create a database")
    other = conninfo.make_conninfo(database_url, dbname=name)
    try:
        follower = follower_at_head(recorder)
        with foreign_write(other) as foreign:
            ids = set(recorder.insert_events([event(uuid4(), 1)]))
            wait_until_seen(follower, ids, "a transaction in another database")
            foreign.rollback()
    finally:
        with pool.connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def prepared_transactions_or_skip(pool: psycopg_pool.ConnectionPool) -> None:
    with pool.connection() as conn:
        row = conn.execute("SELECT current_setting('max_prepared_transactions')::int").fetchone()
    if row is None or row[0] == 0:
        pytest.skip(
            "the server has max_prepared_transactions = 0, so it cannot prepare a "
            "transaction (the embedded server sets it to 20)"
        )


@contextmanager
def prepared(conn: psycopg.Connection[Any], pool: psycopg_pool.ConnectionPool) -> Iterator[str]:
    """Prepare ``conn``'s transaction; yield its gid; roll it back at the end if it is
    still there."""
    gid = f"eventkit-test-{uuid4().hex[:8]}"
    conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
    try:
        yield gid
    finally:
        with pool.connection() as admin:
            if admin.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", (gid,)).fetchone():
                admin.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


def test_a_prepared_transaction_that_wrote_elsewhere_delays_no_follower(
    recorder: PostgresEventRecorder, database_url: str, pool: psycopg_pool.ConnectionPool
) -> None:
    prepared_transactions_or_skip(pool)
    follower = follower_at_head(recorder)
    with psycopg.connect(database_url, autocommit=False) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.eventkit_prepared_work (n integer)")
        conn.commit()
        conn.execute("INSERT INTO public.eventkit_prepared_work VALUES (1)")
        with prepared(conn, pool):
            ids = set(recorder.insert_events([event(uuid4(), 1)]))
            wait_until_seen(follower, ids, "a prepared transaction")


def test_a_prepared_transaction_that_appended_holds_followers_and_status_names_it(
    recorder: PostgresEventRecorder,
    database_url: str,
    pool: psycopg_pool.ConnectionPool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prepared_transactions_or_skip(pool)
    follower = follower_at_head(recorder)
    with psycopg.connect(database_url, autocommit=False) as conn:
        [doomed] = append_in(conn, recorder, [event(uuid4(), 1)])
        with prepared(conn, pool) as gid:
            [later] = recorder.insert_events([event(uuid4(), 1)])
            # The prepared transaction may still commit its event: nothing after it is read.
            time.sleep(0.05)  # past the horizon's 10 ms, so the lock-based path decides
            follower.drain()
            assert later not in {n.id for n in follower.seen}
            [warning] = [w for w in server_warnings(pool, recorder.schema, hold_s=0.0) if gid in w]
            assert "prepared transaction" in warning
            assert f"ROLLBACK PREPARED '{gid}'" in warning
            assert "pg_terminate_backend cannot end it" in warning
            monkeypatch.setenv("DATABASE_URL", database_url)
            monkeypatch.setenv("EVENTKIT_SCHEMA", recorder.schema)
            monkeypatch.setattr(status_module, "HOLD_WARNING_S", 0.0)
            assert main(["status", "--json"]) == 0
            reported = json.loads(capsys.readouterr().out)["warnings"]
            assert any(f"ROLLBACK PREPARED '{gid}'" in w for w in reported)
            with pool.connection() as admin:
                admin.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
    wait_until_seen(follower, {later}, "the rolled-back prepared transaction")
    assert doomed not in {n.id for n in follower.seen}


def test_a_transaction_that_wrote_elsewhere_first_cannot_append(
    recorder: PostgresEventRecorder, database_url: str
) -> None:
    with foreign_write(database_url) as conn:
        with pytest.raises(psycopg.errors.InvalidTransactionState) as refused:
            append_in(conn, recorder, [event(uuid4(), 1)])
        assert "wrote elsewhere before appending to" in str(refused.value)
        assert refused.value.diag.message_hint is not None
        conn.rollback()
    # Through COPY (more than 32 events) as well.
    with foreign_write(database_url) as conn:
        with pytest.raises(psycopg.errors.InvalidTransactionState):
            append_in(conn, recorder, [event(uuid4(), v) for v in range(1, 41)])
        conn.rollback()


def test_appends_first_then_other_writes_are_accepted_and_waited_for(
    recorder: PostgresEventRecorder, database_url: str
) -> None:
    """A transaction that appends first may append again and write elsewhere after: it
    holds the log's lock from its first append, so followers wait for it."""
    follower = follower_at_head(recorder)
    stream = uuid4()
    with open_transaction(database_url) as writer:
        first = append_in(writer, recorder, [event(stream, 1)])
        writer.execute("CREATE TEMPORARY TABLE elsewhere (n integer)")
        writer.execute("INSERT INTO elsewhere VALUES (1)")
        second = append_in(writer, recorder, [event(stream, v) for v in range(2, 42)])
        [later] = recorder.insert_events([event(uuid4(), 1)])
        time.sleep(0.05)
        follower.drain()
        assert follower.seen == []
        writer.commit()
    wait_until_seen(follower, {*first, *second, later}, "the writer's commit")
    assert [n.id for n in follower.seen] == [*first, *second, later]


def test_savepoints_an_append_rolled_back_to_a_savepoint_ends_the_right_to_append(
    recorder: PostgresEventRecorder, database_url: str
) -> None:
    follower = follower_at_head(recorder)
    with open_transaction(database_url) as writer:
        writer.execute("SAVEPOINT a")
        kept = append_in(writer, recorder, [event(uuid4(), 1)])
        writer.execute("RELEASE SAVEPOINT a")  # the append stays, and the right to append
        kept += append_in(writer, recorder, [event(uuid4(), 1)])
        [later] = recorder.insert_events([event(uuid4(), 1)])
        time.sleep(0.05)
        follower.drain()
        assert follower.seen == []  # waited for: the writer may still commit
        writer.commit()
    wait_until_seen(follower, {*kept, later}, "the writer's commit")

    with open_transaction(database_url) as writer:
        writer.execute("SAVEPOINT a")
        append_in(writer, recorder, [event(uuid4(), 1)])
        writer.execute("ROLLBACK TO SAVEPOINT a")  # the append and its lock are gone
        [after] = recorder.insert_events([event(uuid4(), 1)])
        wait_until_seen(follower, {after}, "a transaction whose append was rolled back")
        with pytest.raises(psycopg.errors.InvalidTransactionState):
            append_in(writer, recorder, [event(uuid4(), 1)])
        writer.rollback()


def test_appending_with_a_notification_uses_copy_inside_its_transaction(
    pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    """With EVENTKIT_NOTIFY the append and the NOTIFY share a transaction: a save of more
    than 32 events goes through COPY there, and its ids are the column's own."""
    recorder = PostgresEventRecorder(pool, schema, notify_channel=f"{schema}_events")
    stream = uuid4()
    ids = recorder.insert_events([event(stream, v) for v in range(1, 41)])
    assert len(ids) == 40
    assert ids == sorted(ids)
    stored = recorder.select_events(stream)
    assert [e.originator_version for e in stored] == list(range(1, 41))
    [n] = recorder.notifications([ids[-1]])
    assert (n.originator_id, n.originator_version) == (stream, 40)

"""The append statement sent through libpq, and eventkit's Application.save(), on a real server."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from psycopg import errors, pq, sql

from eventkit.domain.application import Application
from eventkit.infrastructure.appending import AppendStatements
from eventkit.infrastructure.database import create_pool
from eventkit.infrastructure.factory import event_recorder
from eventkit.infrastructure.libpq import (
    INT8_OID,
    TEXT_OID,
    UUID_OID,
    PreparedStatement,
    StatementLostError,
    command,
    literal,
    numbered,
)
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from tests.integration.test_recorder import Account


def rows(stream: UUID, first: int, count: int) -> list[tuple[UUID, int, str, bytes]]:
    return [(stream, v, "Tested", b'{"v": %d}' % v) for v in range(first, first + count)]


def stored(conn: psycopg.Connection[object], schema: str) -> list[tuple[object, ...]]:
    return conn.execute(
        sql.SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {} ORDER BY notification_id"
        ).format(sql.Identifier(schema, "stored_events"))
    ).fetchall()


def prepared_names(conn: psycopg.Connection[object]) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements").fetchall()}


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[object]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def test_rows_round_trip_with_their_ids(conn: psycopg.Connection[object], schema: str) -> None:
    stream = uuid4()
    statements = AppendStatements(schema)
    ids = statements.insert(conn, rows(stream, 1, 3)) + statements.insert(conn, rows(stream, 4, 1))
    assert stored(conn, schema) == [
        (i, stream, v, "Tested", b'{"v": %d}' % v) for i, v in zip(ids, range(1, 5), strict=True)
    ]


def test_statements_dropped_under_the_connection_are_prepared_again(
    conn: psycopg.Connection[object], schema: str
) -> None:
    statements = AppendStatements(schema)
    statements.insert(conn, rows(uuid4(), 1, 2))
    [name] = prepared_names(conn)
    assert name.startswith("eventkit_")
    conn.execute("DISCARD ALL")  # what a pooler may run between clients
    assert prepared_names(conn) == set()

    statements.insert(conn, rows(uuid4(), 1, 2))
    assert prepared_names(conn) == {name}
    assert len(stored(conn, schema)) == 4


def test_recorders_of_two_schemas_share_a_connection(
    conn: psycopg.Connection[object], schema: str, other_schema: str
) -> None:
    stream = uuid4()
    # Two of them for one schema, too: the second must not prepare the same name again.
    for statements in (AppendStatements(schema), AppendStatements(schema)):
        statements.insert(conn, rows(uuid4(), 1, 1))
    AppendStatements(other_schema).insert(conn, rows(stream, 1, 1))
    assert len(stored(conn, schema)) == 2
    assert [r[1] for r in stored(conn, other_schema)] == [stream]
    assert len(prepared_names(conn)) == 2


def test_a_duplicate_raises_psycopgs_unique_violation_and_leaves_the_connection_usable(
    conn: psycopg.Connection[object], schema: str
) -> None:
    stream = uuid4()
    statements = AppendStatements(schema)
    statements.insert(conn, rows(stream, 1, 2))
    with pytest.raises(errors.UniqueViolation) as raised:
        statements.insert(conn, rows(stream, 2, 1))
    assert raised.value.diag.constraint_name == "stored_events_pkey"
    assert f"(originator_id, originator_version)=({stream}, 2)" in str(raised.value)
    assert statements.insert(conn, rows(stream, 3, 1))
    assert [r[2] for r in stored(conn, schema)] == [1, 2, 3]


def test_rows_commit_with_the_connections_transaction(
    database_url: str, conn: psycopg.Connection[object], schema: str
) -> None:
    statements = AppendStatements(schema)
    # A non-autocommit connection: the statement opens a transaction that the commit ends.
    with psycopg.connect(database_url) as writer:
        statements.insert(writer, rows(uuid4(), 1, 1))
        assert stored(conn, schema) == []
        writer.rollback()
        statements.insert(writer, rows(uuid4(), 1, 1))
        writer.commit()
    assert len(stored(conn, schema)) == 1
    # An autocommit connection: inside transaction() the rows wait for its end...
    with psycopg.connect(database_url, autocommit=True) as writer:
        with writer.transaction():
            statements.insert(writer, rows(uuid4(), 1, 1))
            assert len(stored(conn, schema)) == 1
        assert len(stored(conn, schema)) == 2
        # ...outside it, the statement is its own transaction.
        statements.insert(writer, rows(uuid4(), 1, 1))
        assert len(stored(conn, schema)) == 3


def test_eventkit_applications_save_aggregates_events_and_nothing(
    app_env: dict[str, str],
) -> None:
    app = Application(env=app_env)
    first, second = Account(owner="a"), Account(owner="b")
    second.credit(amount=Decimal("2.50"))
    recordings = app.save(first, None, second)
    assert [
        (r.domain_event.originator_id, r.domain_event.originator_version) for r in recordings
    ] == [
        (first.id, 1),
        (second.id, 1),
        (second.id, 2),
    ]
    assert app.save() == []
    assert app.save(None) == []

    # A domain event on its own goes through eventsourcing's own save().
    first.credit(amount=Decimal(1))
    [pending] = first.collect_events()
    [recording] = app.save(pending)
    assert recording.notification.originator_version == 2
    assert app.repository.get(first.id).balance == Decimal(1)
    assert app.repository.get(second.id).balance == Decimal("2.50")
    stored_events: list[StoredEvent] = event_recorder(app).select_events(second.id)
    assert [e.originator_version for e in stored_events] == [1, 2]
    notification_ids = [r.notification.id for r in recordings]
    assert notification_ids == sorted(notification_ids)


def test_begin_and_run_opens_a_transaction_and_survives_a_dropped_statement(
    conn: psycopg.Connection[object], database_url: str, schema: str
) -> None:
    insert = PreparedStatement(
        numbered(
            f'INSERT INTO "{schema}".stored_events (originator_id, originator_version, topic, '
            "state) VALUES (%s, %s, %s, '\\x7b7d') RETURNING originator_version, '%s'"
        ),
        (UUID_OID, INT8_OID, TEXT_OID),
    )
    with psycopg.connect(database_url, autocommit=True) as writer:
        for version in (1, 2):
            if version == 2:
                writer.execute("DEALLOCATE ALL")  # what psycopg does after a rollback
            topic = literal(writer, "it's")
            result = insert.begin_and_run(writer, f"'{uuid4()}', {version}, {topic}")
            assert result.get_value(0, 0) == str(version).encode()
            assert result.get_value(0, 1) == b"%s"  # a literal, not a placeholder
            assert writer.info.transaction_status == pq.TransactionStatus.INTRANS
            assert stored(conn, schema) == []  # not committed yet
            command(writer, b"ROLLBACK")
        # In a transaction, a statement dropped under it ends the transaction.
        command(writer, b"BEGIN")
        writer.execute("DEALLOCATE ALL")
        with pytest.raises(StatementLostError):
            insert.run(writer, [uuid4().bytes, (1).to_bytes(8, "big"), b"x"], (1, 1, 0))
        assert writer.info.transaction_status == pq.TransactionStatus.IDLE
        insert.run(writer, [uuid4().bytes, (1).to_bytes(8, "big"), b"x"], (1, 1, 0))
    assert len(stored(conn, schema)) == 1


def test_without_prepared_statements_appends_prepare_nothing(
    database_url: str, schema: str
) -> None:
    settings = Settings(database_url=database_url, schema=schema, prepared_statements=False)
    pool = create_pool(database_url, settings, name="eventkit-unprepared")
    try:
        recorder = PostgresEventRecorder(pool, schema)
        stream = uuid4()
        for version in range(1, 12):  # past psycopg's threshold of 5 runs
            recorder.insert_events([StoredEvent(stream, version, "Tested", b"{}")])
        with pool.connection() as c:
            assert prepared_names(c) == set()
        assert [e.originator_version for e in recorder.select_events(stream)] == list(range(1, 12))
    finally:
        pool.close()

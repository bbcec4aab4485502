"""``eventkit db ...`` against the server the tests use."""

from __future__ import annotations

import pytest

from eventkit.cli import main
from eventkit.infrastructure.settings import redact


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str, schema: str) -> str:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    return schema


def test_db_url_prints_the_url_in_use(
    cli_env: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "url"]) == 0
    assert capsys.readouterr().out.strip() == redact(database_url)


def test_db_migrate_is_idempotent(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "migrate"]) == 0
    assert f"schema {cli_env} is up to date" in capsys.readouterr().out


def test_db_migrate_creates_a_new_schema(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from uuid import uuid4

    from psycopg import sql

    name = f"cli_{uuid4().hex[:12]}"
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", name)
    try:
        assert main(["db", "migrate"]) == 0
        out = capsys.readouterr().out
        assert f"applied 0001_stored_events.sql to schema {name}" in out
    finally:
        import psycopg

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def test_db_start_and_stop_leave_a_configured_server_alone(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "start"]) == 0
    assert main(["db", "stop"]) == 0
    out = capsys.readouterr().out
    assert "nothing to start" in out
    assert "stops none" in out


def test_errors_are_reported_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EVENTKIT_SCHEMA", "Bad-Name")
    assert main(["db", "url"]) == 2  # a setting refused: usage
    assert "EVENTKIT_SCHEMA='Bad-Name'" in capsys.readouterr().err

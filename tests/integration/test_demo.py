"""The demo end to end, small, and its progress and endings on and off a terminal."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import textwrap
from uuid import uuid4

import psycopg_pool
import pytest
from psycopg import sql

from eventkit.cli.progress import Completion
from eventkit.infrastructure.settings import Settings
from eventkit.shop.demo import main
from eventkit.shop.demo.ending import show_ending


def test_the_demo_shows_lag_draining_read_models_and_a_poison_order_retried(
    database_url: str,
    pool: psycopg_pool.ConnectionPool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    code = main(["--orders", "200", "--writers", "4", "--drop-schema"])
    out = capsys.readouterr().out
    found = re.search(r"schema +(demo_\w+)", out)
    assert found is not None, out
    schema = found[1]
    try:
        assert code == 0, out
        for expected in [
            "drained: every view has the last event",
            "is transaction id/notification id",
            "$ eventkit status",
            "orders by status: ",
            "least available stock:",
            "revenue per day:",
            "the views agree with the event store",
            "-> 'placed' after",
            "-> 'paid' after",
            "parked/failed after 3 attempt(s): RuntimeError",
            "parked/behind",
            "retried 2; still parked 0",
            "v1 placed",
            "v2 paid",
            "no dead letters",
            "workers stopped",
            f"the demo wrote into schema {schema}",
            f"EVENTKIT_SCHEMA={schema} eventkit status",
            f'psql "$(eventkit db url --show-password)" -c \'SELECT topic, state FROM {schema}.',
            f"schema {schema} dropped (--drop-schema)",
        ]:
            assert expected in out, f"{expected!r} not in:\n{out}"
        # Off a terminal, the lag lines carry the workload's progress; the last one its end.
        assert re.search(
            r" 200/200 .* written: 100%, [\d,]+ orders/s, all done in [\d.]+ s\n", out
        ), out
        assert not _schema_exists(pool, schema)
    finally:
        with pool.connection() as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.parametrize(
    ("completion", "described"),
    [
        (Completion(0, 200, 1.0), "0%, 0 orders/s, ETA -"),
        (Completion(50, 200, 2.0), "25%, 25 orders/s, ETA 0:06"),
        (Completion(3, 27_000, 2.0), "0%, 2 orders/s, ETA 4:59:58"),
        (Completion(200, 200, 8.04), "100%, 25 orders/s, all done in 8.0 s"),
    ],
)
def test_progress_says_the_share_done_the_rate_and_the_time_left(
    completion: Completion, described: str
) -> None:
    assert completion.describe("orders") == described


def test_off_a_terminal_the_ending_keeps_the_schema_and_prints_how_to_drop_it(
    pool: psycopg_pool.ConnectionPool,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    schema = _new_schema(pool)
    try:
        settings = Settings(database_url=None, schema=schema)
        assert show_ending(settings, pool, database_url, drop=False)
        out = capsys.readouterr().out
        assert f"EVENTKIT_SCHEMA={schema} eventkit status" in out
        assert "keeps running" in out
        assert "eventkit db stop" in out
        assert f"DROP SCHEMA {schema} CASCADE" in out
        assert "[y/N]" not in out
        assert _schema_exists(pool, schema)
    finally:
        _drop(pool, schema)


@pytest.mark.parametrize(("answer", "is_dropped"), [("\n", False), ("y\n", True)])
def test_on_a_terminal_the_ending_asks_and_drops_the_schema_only_on_yes(
    pool: psycopg_pool.ConnectionPool, database_url: str, answer: str, is_dropped: bool
) -> None:
    schema = _new_schema(pool)
    code = f"""
        import psycopg_pool
        from eventkit.infrastructure.settings import Settings
        from eventkit.shop.demo.ending import show_ending

        settings = Settings(database_url={database_url!r}, schema={schema!r})
        with psycopg_pool.ConnectionPool({database_url!r}, min_size=1) as pool:
            show_ending(settings, pool, {database_url!r}, drop=False)
    """
    try:
        out = _in_terminal(code, answer=answer)
        assert f"drop schema {schema} now? [y/N]" in out, out
        assert (f"schema {schema} dropped (as asked)" in out) is is_dropped, out
        assert _schema_exists(pool, schema) is not is_dropped
    finally:
        _drop(pool, schema)


def test_on_a_terminal_log_lines_print_above_the_progress_bar_not_over_it() -> None:
    code = """
        import logging
        from eventkit.cli import logs
        from eventkit.cli.progress import progress_bar

        logs.configure(logging.INFO, "text")
        with progress_bar("orders", 40, "orders") as advance:
            advance(20)
            logging.getLogger("eventkit.demo").warning("a line from the log")
            advance(40)
    """
    out = _in_terminal(code)
    shown = [line for line in _screen(out) if "a line from the log" in line]
    assert len(shown) == 1, out
    assert "ETA" not in shown[0], out  # not on the bar's line
    assert any(re.search(r"40/40 .*100%.* orders/s .*ETA", line) for line in _screen(out)), out


def _in_terminal(code: str, answer: str | None = None) -> str:
    """Run Python code on a pseudo-terminal; type ``answer`` when it asks; return its output."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "160"},
    )
    os.close(follower)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal on exit
                break
            if not chunk:
                break
            output += chunk
            if answer is not None and b"[y/N]" in output:
                os.write(leader, answer.encode())
                answer = None
    finally:
        os.close(leader)
        process.wait(timeout=60)
    return output.decode(errors="replace")


def _screen(raw: str) -> list[str]:
    """The lines a terminal shows: a carriage return goes back to the line's start, an
    erase-line (ESC [2K) clears it, and other escape sequences show nothing."""
    lines = []
    for line in raw.split("\n"):
        cells: list[str] = []
        cursor = 0
        for part in re.split(r"(\r|\x1b\[2K|\x1b\[[0-9;?]*[A-Za-z])", line):
            if part == "\r":
                cursor = 0
            elif part == "\x1b[2K":
                cells, cursor = [], 0
            elif part.startswith("\x1b["):
                continue
            else:  # overwrites what the cursor passes over
                cells[cursor : cursor + len(part)] = list(part)
                cursor += len(part)
        lines.append("".join(cells))
    return lines


def _new_schema(pool: psycopg_pool.ConnectionPool) -> str:
    schema = f"test_demo_{uuid4().hex[:12]}"
    with pool.connection() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return schema


def _schema_exists(pool: psycopg_pool.ConnectionPool, schema: str) -> bool:
    with pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,))
        return bool(row.fetchone() == (1,))


def _drop(pool: psycopg_pool.ConnectionPool, schema: str) -> None:
    with pool.connection() as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

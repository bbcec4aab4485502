"""The demo end to end, small, and its progress and endings on and off a terminal."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import textwrap

import psycopg_pool
import pytest
from psycopg import sql

from eventkit.shop.demo import main
from eventkit.shop.demo.progress import Completion


def test_the_demo_shows_lag_draining_read_models_and_a_poison_order_retried(
    database_url: str,
    pool: psycopg_pool.ConnectionPool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    code = main(["--orders", "200", "--writers", "4"])
    out = capsys.readouterr().out
    found = re.search(r"schema +(demo_\w+)", out)
    assert found is not None, out
    schema = found[1]
    try:
        assert code == 0, out
        for expected in [
            "drained: every view has the last event",
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
        ]:
            assert expected in out, f"{expected!r} not in:\n{out}"
        # Off a terminal, the lag lines carry the workload's progress; the last one its end.
        assert re.search(
            r" 200/200 .* written: 100%, [\d,]+ orders/s, all done in [\d.]+ s\n", out
        ), out
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


def test_on_a_terminal_log_lines_print_above_the_progress_bar_not_over_it() -> None:
    code = """
        import logging
        from eventkit.cli import logs
        from eventkit.shop.demo.progress import progress_bar

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

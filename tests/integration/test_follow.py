"""``eventkit reset ... --execute --follow`` (issue 14, point 10): after the move, progress
while the running workers catch up, through the real ``eventkit`` command in a process of
its own (no terminal: the plain-line mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg_pool
import pytest
from psycopg import sql

from eventkit.domain.shop.application import Shop
from eventkit.loading import load_app
from eventkit.runner import Workers
from tests.integration.projection_support import settings_for, stock_up
from tests.integration.reaction_support import place
from tests.integration.signals_support import ctrl_c_reaches_children

RESET = ["reset", "order_summaries", "--to-origin", "--execute", "--follow"]
NO_WORKER = "eventkit: no live worker runs order_summaries"


@contextmanager
def following(database_url: str, schema: str) -> Iterator[subprocess.Popen[str]]:
    """``eventkit reset order_summaries --to-origin --execute --follow`` running, once it
    has moved the projection and said that no worker runs it (none does yet)."""
    with ctrl_c_reaches_children():
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventkit.cli", *RESET],
            env={**os.environ, "DATABASE_URL": database_url, "EVENTKIT_SCHEMA": schema},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # blocks until the line, or the end of the process
        assert first.startswith(NO_WORKER), first + proc.stderr.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # closes the pipes


def summary_events(pool: psycopg_pool.ConnectionPool, schema: str) -> int:
    topics = load_app(None).consumer("order_summaries").topics()
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE topic = ANY(%s)").format(
                sql.Identifier(schema, "stored_events")
            ),
            (topics,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_reset_follow_shows_the_workers_catching_up_and_ends_once_caught_up(
    app_env: dict[str, str], pool: psycopg_pool.ConnectionPool, database_url: str, schema: str
) -> None:
    shop = Shop(app_env)
    stock_up(shop)
    place(shop, 5)
    events = summary_events(pool, schema)
    assert events > 0
    settings = settings_for(database_url, schema)
    with (
        following(database_url, schema) as proc,
        Workers(load_app(None), ["order_summaries"], settings=settings, heartbeat_s=0.2),
    ):
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "moved projection order_summaries" in out
    caught_up = out.strip().splitlines()[-1]
    assert caught_up.startswith(f"caught up: order_summaries processed {events:,} events in "), out
    assert caught_up.endswith(" events/s)"), out


def test_ctrl_c_stops_following_and_says_the_workers_go_on(
    app_env: dict[str, str], database_url: str, schema: str
) -> None:
    shop = Shop(app_env)
    stock_up(shop)
    place(shop, 1)
    with following(database_url, schema) as proc:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "moved projection order_summaries" in out
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("eventkit: stopped following order_summaries")
    assert err.strip().endswith("its workers go on")


@pytest.mark.parametrize("command", [RESET[:1], ["reactions", "replay"]])
def test_follow_says_it_never_starts_workers(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventkit.cli", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--follow" in result.stdout
    assert "never starts workers" in " ".join(result.stdout.split())

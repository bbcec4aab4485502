"""``eventkit rebuild``: progress labelled with the projection's name, and Ctrl-C leaves
nothing behind (issue 14, point 10), through the real command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import psycopg_pool
from psycopg import sql

from eventkit.projections.projection import create_tables, table_identifiers
from eventkit.projections.shop.order_summaries import OrderSummaries
from tests.integration.signals_support import ctrl_c_reaches_children

ROOT = Path(__file__).resolve().parents[2]


def leftovers(pool: psycopg_pool.ConnectionPool, schema: str) -> tuple[int, int]:
    """The rebuild's copy tables, and its tracking rows, in ``schema``."""
    with pool.connection() as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
            (schema, "%\\_\\_rebuild"),
        ).fetchone()
        rows = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE consumer = %s").format(
                sql.Identifier(schema, "tracking")
            ),
            ("order_summaries#rebuild",),
        ).fetchone()
    assert tables is not None
    assert rows is not None
    return int(tables[0]), int(rows[0])


def test_ctrl_c_on_a_rebuild_drops_its_copy_and_says_so(
    database_url: str, schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    with pool.connection() as conn, conn.transaction():
        create_tables(conn, schema, OrderSummaries)
    # Hold the live view locked: the rebuild fills its copy, then waits at the swap, where
    # Ctrl-C reaches it at a moment the test knows.
    holder = psycopg.connect(database_url)
    proc = None
    try:
        live = table_identifiers(schema, OrderSummaries).values()
        holder.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.SQL(", ").join(live))
        )
        with ctrl_c_reaches_children():
            proc = subprocess.Popen(
                [sys.executable, "-m", "eventkit.cli", "rebuild", "order_summaries"],
                env={
                    **os.environ,
                    "DATABASE_URL": database_url,
                    "EVENTKIT_SCHEMA": schema,
                    "PYTHONFAULTHANDLER": "1",  # SIGABRT below prints every thread's stack
                },
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        deadline = time.monotonic() + 60
        while True:
            with pool.connection() as conn:
                waiting = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND application_name LIKE 'eventkit:rebuild:%%' AND pid <> pg_backend_pid()"
                    " AND datname = current_database() AND strpos(query, %s) > 0",
                    (schema,),
                ).fetchone()
            if waiting is not None and waiting[0] > 0:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the rebuild never reached its swap"
            time.sleep(0.05)
        assert leftovers(pool, schema)[0] > 0  # its copy exists while it waits
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            # Say where it hangs: faulthandler prints each thread's stack on SIGABRT.
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=30)
            raise AssertionError(f"the rebuild did not stop after SIGINT:\n{out}\n{err}") from None
    finally:
        holder.rollback()
        holder.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "eventkit: rebuild order_summaries interrupted: nothing was swapped" in err
    assert leftovers(pool, schema) == (0, 0)

"""``eventkit demo`` end to end, small: writers and workers, lag, read models, dead letters."""

from __future__ import annotations

import re

import psycopg_pool
import pytest
from psycopg import sql

from eventkit.shop.demo import main


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
    finally:
        with pool.connection() as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(found[1])))

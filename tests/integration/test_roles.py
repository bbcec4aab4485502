"""Least privilege (issue 17, point 3), on the real server and through the real CLI.

The schema's owner runs ``eventkit db migrate`` (which also creates the application's views)
and ``eventkit db roles --execute``; then the application appends as the application role,
the workers run as the worker role and the read-only commands as the reader role, none of
them able to create anything; the application role cannot update or delete stored events;
a read-model consumer's role still reads a view after a rebuild. The steps are those of
docs/operations.md's production checklist.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import errors, sql

from eventkit.domain.shop.application import Shop
from tests.integration.projection_support import stock_up, workload

ROOT = Path(__file__).resolve().parents[2]
CONSUMERS = ["order_summaries", "stock_levels", "revenue_by_day", "ship_paid_orders", "order_mails"]


def as_role(url: str, role: str) -> str:
    """``url`` logging in as ``role`` (the test servers trust local connections)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))


def eventkit(*args: str, url: str, schema: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "EVENTKIT_SCHEMA": schema, "EVENTKIT_MIGRATE": "off"}
    return subprocess.run(
        [sys.executable, "-m", "eventkit.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def logins(database_url: str, schema: str) -> Iterator[dict[str, str]]:
    """The three roles of ``eventkit db roles`` (made by the schema's owner, through the
    CLI) and a login role in each, plus a BI tool's login that may read one view only."""
    prefix = schema
    made = eventkit("db", "roles", "--prefix", prefix, "--execute", url=database_url, schema=schema)
    assert made.returncode == 0, made
    names = {kind: f"{prefix}_{kind}_login" for kind in ("app", "worker", "reader", "bi")}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for kind, login in names.items():
            member = sql.SQL(" IN ROLE {}").format(sql.Identifier(f"{prefix}_{kind}"))
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN{}").format(
                    sql.Identifier(login), member if kind != "bi" else sql.SQL("")
                )
            )
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema), sql.Identifier(names["bi"])
            )
        )
        # The checklist's timeouts.
        for kind in ("app", "worker"):
            login = sql.Identifier(names[kind])
            conn.execute(
                sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = '60s'").format(
                    login
                )
            )
        conn.execute(
            sql.SQL("ALTER ROLE {} SET statement_timeout = '30s'").format(
                sql.Identifier(names["app"])
            )
        )
    yield names
    with psycopg.connect(database_url, autocommit=True) as conn:
        for role in [*names.values(), *(f"{prefix}_{k}" for k in ("app", "worker", "reader"))]:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def refused(url: str, statement: sql.Composable) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(statement)
        except errors.InsufficientPrivilege:
            return True
    return False


def caught_up(url: str, schema: str) -> str | None:
    """The status report while a consumer lags; None once every one has caught up."""
    status = eventkit("status", *CONSUMERS, "--json", url=url, schema=schema)
    assert status.returncode == 0, status
    report = json.loads(status.stdout)
    rows = report["projections"] + report["reactions"]
    done = (
        len(rows) == len(CONSUMERS)
        and all(r["lag_events"] == 0 and r["position"] != "0/0" for r in rows)
        and all(r["queued"] == 0 and not r["in_flight"] for r in report["reactions"])
    )
    return None if done else status.stdout


def test_each_process_runs_with_the_least_it_needs(
    database_url: str, schema: str, logins: dict[str, str], tmp_path: Path
) -> None:
    owner = eventkit("db", "migrate", url=database_url, schema=schema)
    assert owner.returncode == 0, owner
    # `db migrate` created the views, so no worker needs to create anything.
    assert f"created table {schema}.order_summaries" in owner.stdout
    app, worker, reader, bi = (as_role(database_url, logins[k]) for k in logins)
    s = sql.Identifier(schema)
    events = sql.Identifier(schema, "stored_events")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT SELECT ON {} TO {}").format(
                sql.Identifier(schema, "order_summaries"), sql.Identifier(logins["bi"])
            )
        )

    # The application appends and reads as its role, with EVENTKIT_MIGRATE=off.
    env = {
        "PERSISTENCE_MODULE": "eventkit.infrastructure.factory",
        "DATABASE_URL": app,
        "EVENTKIT_SCHEMA": schema,
        "EVENTKIT_MIGRATE": "off",
    }
    shop = Shop(env=env)
    stock_up(shop)
    assert workload(shop, 20, seed=3) > 0
    # ...and can neither change nor delete a stored event, nor create anything.
    assert refused(app, sql.SQL("UPDATE {} SET topic = 'x'").format(events))
    assert refused(app, sql.SQL("DELETE FROM {}").format(events))
    assert refused(app, sql.SQL("TRUNCATE {}").format(events))
    assert refused(app, sql.SQL("CREATE TABLE {}.intruder (x int)").format(s))
    assert refused(worker, sql.SQL("DELETE FROM {}").format(events))
    assert refused(worker, sql.SQL("CREATE TABLE {}.intruder (x int)").format(s))
    assert refused(reader, sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, "tracking")))
    assert refused(
        reader, sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, "subject_keys"))
    )

    # The workers run as the worker role until every consumer has caught up, which the
    # reader role's `eventkit status` shows.
    log = tmp_path / "workers.log"
    with log.open("wb") as out:
        workers = subprocess.Popen(
            [sys.executable, "-m", "eventkit.cli", "workers", *CONSUMERS],
            env={
                **os.environ,
                "DATABASE_URL": worker,
                "EVENTKIT_SCHEMA": schema,
                "EVENTKIT_MIGRATE": "off",
            },
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while (lagging := caught_up(reader, schema)) is not None:
            assert workers.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{lagging}\n{log.read_text()}"
            time.sleep(0.5)
    finally:
        workers.send_signal(signal.SIGTERM)
        workers.wait(timeout=60)
    assert workers.returncode == 0, log.read_text()

    # The read-only commands run as the reader role.
    for command in (
        ["status"],
        ["dlq", "list"],
        ["partitions", "order_summaries"],
        ["audit", "order_summaries"],
        ["db", "current"],
    ):
        done = eventkit(*command, url=reader, schema=schema)
        assert done.returncode == 0, done

    # A rebuild (by the owner) swaps a new table in; the reader role and the BI tool's
    # role, granted SELECT on that view alone, still read it.
    def summaries(url: str) -> int:
        table = sql.Identifier(schema, "order_summaries")
        with psycopg.connect(url) as conn:
            found = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        assert found is not None
        return int(found[0])

    before = summaries(database_url)
    assert before > 0
    rebuilt = eventkit("rebuild", "order_summaries", url=database_url, schema=schema)
    assert rebuilt.returncode == 0, rebuilt
    assert summaries(reader) == summaries(bi) == before


def test_a_role_without_the_rights_says_so(
    database_url: str, schema: str, logins: dict[str, str]
) -> None:
    """One line naming the role, the schema and what to do; no traceback."""
    app, bi = as_role(database_url, logins["app"]), as_role(database_url, logins["bi"])
    denied = eventkit("status", url=bi, schema=schema)
    assert denied.returncode == 1
    assert denied.stderr.splitlines() == [
        f"eventkit: error: role {logins['bi']!r} may not read schema {schema!r} (permission "
        "denied for table schema_migrations); give it a role of `eventkit db roles`"
    ]
    elsewhere = f"{schema}_new"
    denied = eventkit("db", "migrate", url=app, schema=elsewhere)
    assert denied.returncode == 1
    assert len(denied.stderr.splitlines()) == 1
    assert f"role {logins['app']!r} may not migrate schema {elsewhere!r}" in denied.stderr
    assert "run `eventkit db migrate` as the schema's owner" in denied.stderr

"""Who creates, migrates and starts what (issue 14, point 7), through the real CLI.

Read-only and operator commands never create or migrate a schema; with
``EVENTKIT_MIGRATE=off`` no process does, and one that finds the schema missing or behind
says so; ``eventkit db current`` and ``db history`` tell where the schema stands.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from eventkit.domain.shop.application import Shop
from eventkit.infrastructure.embedded import EmbeddedPostgres
from eventkit.infrastructure.errors import SchemaNotReadyError
from eventkit.infrastructure.migrations import label, load_migrations, migrate
from tests.integration.projection_support import stock_up

ROOT = Path(__file__).resolve().parents[2]


def eventkit(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the ``eventkit`` command in a process of its own, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "eventkit.cli", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def schema_exists(database_url: str, name: str) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (name,))
        found = row.fetchone()
    return found is not None and found[0] == 1


@pytest.fixture
def new_schema(database_url: str) -> Iterator[str]:
    """A schema name no one has created yet; dropped afterwards if anything made it."""
    name = f"ready_{uuid4().hex[:12]}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["dlq", "list"],
        ["partitions", "order_summaries"],
        ["audit", "order_summaries"],
    ],
    ids=" ".join,
)
def test_read_only_commands_never_create_a_schema(
    command: list[str], database_url: str, new_schema: str
) -> None:
    """`EVENTKIT_SCHEMA=typo eventkit status` created 14 tables and showed `stopped 0/0`."""
    done = eventkit(*command, DATABASE_URL=database_url, EVENTKIT_SCHEMA=new_schema)
    assert done.returncode == 1, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"schema '{new_schema}' does not exist" in lines[0]
    assert "eventkit db migrate" in lines[0]
    assert not schema_exists(database_url, new_schema)


def test_with_migrate_off_only_db_migrate_changes_the_schema(
    database_url: str, new_schema: str
) -> None:
    env = {"DATABASE_URL": database_url, "EVENTKIT_SCHEMA": new_schema}
    app_env = {**env, "PERSISTENCE_MODULE": "eventkit.infrastructure.factory"}
    migrations = load_migrations()
    last = label(migrations[-1])

    # Missing: an application with EVENTKIT_MIGRATE=off refuses to start and creates nothing.
    with pytest.raises(SchemaNotReadyError, match=f"schema '{new_schema}' does not exist"):
        Shop(env={**app_env, "EVENTKIT_MIGRATE": "off"})
    assert not schema_exists(database_url, new_schema)
    current = eventkit("db", "current", **env)
    assert (current.returncode, current.stdout.strip()) == (
        1,
        f"schema {new_schema}: does not exist; create it with `eventkit db migrate`",
    )

    # Behind (an older release migrated it): the application and the workers say what is
    # pending; `db current` and `db history` show where it stands.
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, new_schema, migrations[:-1])
    with pytest.raises(SchemaNotReadyError, match=f"1 migration\\(s\\) pending \\({last}\\)"):
        Shop(env={**app_env, "EVENTKIT_MIGRATE": "off"})
    workers = eventkit("workers", "--projections-only", EVENTKIT_MIGRATE="off", **env)
    assert workers.returncode == 1, workers
    assert f"pending ({last}); run `eventkit db migrate`" in workers.stderr
    current = eventkit("db", "current", **env)
    assert current.returncode == 1
    before = label(migrations[-2])
    assert current.stdout.startswith(f"schema {new_schema}: {before}, applied 20")
    assert f"1 pending: {last}; run `eventkit db migrate`" in current.stdout
    history = eventkit("db", "history", **env).stdout.splitlines()
    assert len(history) == len(migrations)
    assert all(" applied 20" in line for line in history[:-1]), history
    assert history[-1].split() == [last, "pending"]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            sql.SQL("SELECT max(version) FROM {}").format(
                sql.Identifier(new_schema, "schema_migrations")
            )
        ).fetchone()
    assert row == (migrations[-2].version,)

    # `db migrate` brings it up to date; the application then starts and writes.
    migrated = eventkit("db", "migrate", **env)
    assert migrated.stdout.splitlines()[0] == f"applied {last}.sql to schema {new_schema}"
    current = eventkit("db", "current", **env)
    assert current.returncode == 0
    assert current.stdout.startswith(f"schema {new_schema}: {last} (head), applied")
    stock_up(Shop(env={**app_env, "EVENTKIT_MIGRATE": "off"}))


def test_writers_migrate_on_connect_by_default(database_url: str, new_schema: str) -> None:
    env = {"DATABASE_URL": database_url, "EVENTKIT_SCHEMA": new_schema}
    stock_up(Shop(env={**env, "PERSISTENCE_MODULE": "eventkit.infrastructure.factory"}))
    current = eventkit("db", "current", **env)
    assert current.returncode == 0, current
    assert "(head)" in current.stdout


def test_after_db_stop_no_command_but_db_start_starts_the_server() -> None:
    """After `eventkit db stop`, `db url`, `status` and every other command silently
    started the embedded server again."""
    # Not below pytest's temporary folder, which another pytest session makes private
    # again (0700): under root, the server's own user must reach its folder.
    with tempfile.TemporaryDirectory(prefix="eventkit-test-") as folder:
        stopped_server_is_left_alone(Path(folder) / "home")


def stopped_server_is_left_alone(home: Path) -> None:
    env = {"EVENTKIT_HOME": str(home), "DATABASE_URL": ""}
    server = EmbeddedPostgres(home)
    try:
        assert eventkit("db", "migrate", **env).returncode == 0  # starts it, creates the schema
        assert server.status().is_running
        assert eventkit("db", "stop", **env).stdout.strip() == "stopped"
        for command in (["db", "url"], ["status"], ["dlq", "list"], ["db", "current"]):
            done = eventkit(*command, **env)
            assert done.returncode == 1, done
            assert done.stderr.splitlines() == [
                f"eventkit: error: the embedded PostgreSQL server (data in {server.pgdata}) "
                "is stopped; start it with `eventkit db start`, or set DATABASE_URL"
            ]
            assert not server.status().is_running, command
        status = eventkit("db", "status", **env)
        assert (status.returncode, "stopped" in status.stdout) == (3, True)
        assert not server.status().is_running
        started = eventkit("db", "start", **env)
        assert started.returncode == 0
        assert server.status().is_running
        assert eventkit("db", "url", **env).stdout.strip() == server.url()
    finally:
        server.stop()

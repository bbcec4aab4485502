"""``eventkit db``: the embedded PostgreSQL server and the schema."""

from __future__ import annotations

import argparse
from typing import Any

from eventkit.infrastructure.database import create_pool, resolve_database_url
from eventkit.infrastructure.embedded import EmbeddedPostgres
from eventkit.infrastructure.migrations import migrate
from eventkit.infrastructure.settings import Settings, redact


def register(commands: Any, parents: list[argparse.ArgumentParser], app_spec: str | None) -> None:
    parser = commands.add_parser(
        "db", parents=parents, help="the embedded PostgreSQL server and the schema's migrations"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, run, text in [
        ("start", _start, "start the embedded server (no-op when DATABASE_URL is set)"),
        ("stop", _stop, "stop the embedded server"),
        ("status", _status, "say which server eventkit uses and whether it runs"),
        ("url", _url, "print the connection URL eventkit uses"),
        ("migrate", _migrate, "create or upgrade the schema (idempotent)"),
    ]:
        actions.add_parser(name, parents=parents, help=text).set_defaults(run=run)


def _start(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if settings.database_url:
        print(f"DATABASE_URL is set ({redact(settings.database_url)}): nothing to start")
        return 0
    print(EmbeddedPostgres(settings.home).start())
    return 0


def _stop(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if settings.database_url:
        print("DATABASE_URL is set: eventkit started no server, so it stops none")
        return 0
    embedded = EmbeddedPostgres(settings.home)
    print("stopped" if embedded.stop() else f"not running ({embedded.pgdata})")
    return 0


def _status(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if settings.database_url:
        print(f"using DATABASE_URL: {redact(settings.database_url)}")
        return 0
    status = EmbeddedPostgres(settings.home).status()
    state = f"running (pid {status.pid}) at {status.url}" if status.is_running else "stopped"
    print(f"embedded PostgreSQL, data in {status.pgdata}: {state}")
    return 0 if status.is_running else 3


def _url(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    print(resolve_database_url(settings))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    url = resolve_database_url(settings)
    pool = create_pool(url, settings, name="eventkit-migrate")
    try:
        with pool.connection() as conn:
            applied = migrate(conn, settings.schema)
    finally:
        pool.close()
    if applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}.sql to schema {settings.schema}")
    else:
        print(f"schema {settings.schema} is up to date")
    return 0

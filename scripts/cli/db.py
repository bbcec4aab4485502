"""``eventkit db``: the embedded PostgreSQL server and the schema.

Only ``db start`` and ``db migrate`` start the embedded server; ``db url``, ``db status``,
``db current`` and ``db history`` only look (a stopped server is reported, never started).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg

from eventkit.cli import EXIT_UNHEALTHY
from eventkit.cli.common import add_json, print_json, settings_of
from eventkit.infrastructure.database import create_pool, resolve_database_url
from eventkit.infrastructure.embedded import EmbeddedPostgres
from eventkit.infrastructure.migrations import (
    SchemaState,
    label,
    load_migrations,
    migrate,
    require_current,
    schema_state,
)
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
        ("url", _url, "print the connection URL eventkit uses (never starts a server)"),
        (
            "migrate",
            _migrate,
            "create or upgrade the schema (idempotent; starts the embedded server if needed)",
        ),
        ("current", _current, "the schema's latest applied migration, and any pending"),
        ("history", _history, "every migration: applied (when) or pending"),
        (
            "roles",
            _roles,
            "print (or --execute) the SQL of least-privilege roles: application, worker, reader",
        ),
    ]:
        action = actions.add_parser(name, parents=parents, help=text)
        action.set_defaults(run=run)
        if name in ("history", "status"):
            add_json(action)
        if name == "url":
            action.add_argument(
                "--show-password",
                action="store_true",
                help="print the password too (by default it is replaced by ***)",
            )
        if name == "roles":
            action.add_argument(
                "--prefix",
                metavar="NAME",
                help="the roles are NAME_app, NAME_worker and NAME_reader (default: the schema)",
            )
            action.add_argument(
                "--execute",
                action="store_true",
                help="run the statements (as the schema's owner) instead of printing them",
            )


def _start(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if settings.database_url:
        print(f"DATABASE_URL is set ({redact(settings.database_url)}): nothing to start")
        return 0
    print(EmbeddedPostgres(settings.home).start())
    return 0


def _stop(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if settings.database_url:
        print("DATABASE_URL is set: eventkit started no server, so it stops none")
        return 0
    embedded = EmbeddedPostgres(settings.home)
    print("stopped" if embedded.stop() else f"not running ({embedded.pgdata})")
    return 0


def _status(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if settings.database_url:
        if args.json:
            print_json({"server": "DATABASE_URL", "url": redact(settings.database_url)})
            return 0
        print(f"using DATABASE_URL: {redact(settings.database_url)}")
        return 0
    status = EmbeddedPostgres(settings.home).status()
    if args.json:
        print_json(
            {
                "server": "embedded",
                "pgdata": str(status.pgdata),
                "running": status.is_running,
                "pid": status.pid,
                "url": status.url and redact(status.url),
            }
        )
        return 0 if status.is_running else EXIT_UNHEALTHY
    state = (
        f"running (pid {status.pid}) at {status.url}"
        if status.is_running
        else "stopped (start it with `eventkit db start`)"
    )
    print(f"embedded PostgreSQL, data in {status.pgdata}: {state}")
    return 0 if status.is_running else EXIT_UNHEALTHY


def _url(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    url = resolve_database_url(settings, start=False)
    print(url if args.show_password else redact(url))
    return 0


@contextmanager
def _connection(settings: Settings, *, start: bool) -> Iterator[psycopg.Connection[Any]]:
    url = resolve_database_url(settings, start=start)
    pool = create_pool(url, settings, name="eventkit-db")
    try:
        with pool.connection() as conn:
            yield conn
    finally:
        pool.close()


def _migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the schema, and the tables of the application's consumers (when an
    application is named), so that no other process needs to create anything."""
    settings = settings_of(args)
    consumers = _consumers(args)
    with _connection(settings, start=True) as conn:
        applied = migrate(conn, settings.schema)
        created = _create_views(conn, settings.schema, consumers)
    if applied:
        for m in applied:
            print(f"applied {label(m)}.sql to schema {settings.schema}")
    else:
        print(f"schema {settings.schema} is up to date")
    for name in created:
        print(f"created table {settings.schema}.{name}")
    return 0


def _consumers(args: argparse.Namespace) -> list[Any]:
    """The application's projections and reactions; none when no application is named."""
    from eventkit.cli.common import app_of
    from eventkit.loading import AppNotFoundError

    try:
        return app_of(args).consumers()
    except AppNotFoundError:
        return []


def _create_views(conn: psycopg.Connection[Any], schema: str, consumers: list[Any]) -> list[str]:
    """Create the consumers' tables that do not exist yet; return their names."""
    from eventkit.projections.projection import create_tables

    def existing() -> set[str]:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s",
            (schema,),
        ).fetchall()
        return {r[0] for r in rows}

    before = existing()
    for consumer in consumers:
        with conn.transaction():
            create_tables(conn, schema, consumer)
    names = {t.name for c in consumers for t in c.tables}
    return sorted(names & (existing() - before))


def _roles(args: argparse.Namespace) -> int:
    from eventkit.infrastructure.roles import Roles

    settings = settings_of(args)
    roles = Roles(settings.schema, args.prefix or settings.schema)
    if not args.execute:
        print(roles.script(), end="")
        return 0
    with _connection(settings, start=False) as conn:
        require_current(conn, settings.schema)
        with conn.transaction():
            for statement in roles.statements():
                if not statement.as_string(None).startswith("--"):
                    conn.execute(statement)
    print(
        f"roles {roles.app}, {roles.worker} and {roles.reader} have their rights on schema "
        f"{settings.schema}; make login roles members of them (CREATE ROLE ... LOGIN IN ROLE "
        f"{roles.app})"
    )
    return 0


def _state(settings: Settings) -> SchemaState:
    with _connection(settings, start=False) as conn:
        return schema_state(conn, settings.schema)


def _current(args: argparse.Namespace) -> int:
    """Like ``alembic current``: where the schema stands. Exit 0 when it is up to date, 1
    when it is missing or has migrations pending (a deploy script's check)."""
    settings = settings_of(args)
    state = _state(settings)
    schema = settings.schema
    if not state.exists:
        print(f"schema {schema}: does not exist; create it with `eventkit db migrate`")
        return 1
    if state.applied:
        last = state.applied[-1]
        head = " (head)" if state.current and not state.unknown else ""
        print(f"schema {schema}: {last.label}{head}, applied {_when(last.applied_at)}")
    for m in state.changed:
        print(f"changed after it was applied: {label(m)}.sql")
    if state.unknown:
        names = ", ".join(a.label for a in state.unknown)
        print(f"applied by a newer eventkit than this one: {names}")
    if state.pending:
        names = ", ".join(label(m) for m in state.pending)
        print(f"{len(state.pending)} pending: {names}; run `eventkit db migrate`")
    return 0 if state.current else 1


def _history(args: argparse.Namespace) -> int:
    """Like ``alembic history``: every migration, applied (when) or pending."""
    settings = settings_of(args)
    state = _state(settings)
    applied = {a.version: a for a in state.applied}
    changed = {m.version for m in state.changed}
    rows = [
        (label(m), "changed" if m.version in changed else "applied", applied[m.version].applied_at)
        if m.version in applied
        else (label(m), "pending", None)
        for m in load_migrations()
    ] + [(a.label, "unknown", a.applied_at) for a in state.unknown]
    rows.sort()
    if args.json:
        document = {
            "schema": settings.schema,
            "exists": state.exists,
            "migrations": [
                {"migration": name, "state": kind, "applied_at": when and when.isoformat()}
                for name, kind, when in rows
            ],
        }
        print(json.dumps(document, indent=2))
        return 0
    if not state.exists:
        print(f"schema {settings.schema} does not exist: every migration is pending")
    width = max(len(name) for name, _, _ in rows)
    for name, kind, when in rows:
        text = {
            "applied": f"applied {_when(when)}",
            "pending": "pending",
            "changed": f"applied {_when(when)}, file changed since (refused)",
            "unknown": f"applied {_when(when)} by a newer eventkit",
        }[kind]
        print(f"{name:<{width}}  {text}")
    return 0


def _when(moment: datetime | None) -> str:
    return "" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"

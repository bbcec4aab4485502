"""How the demo ends: where its data is, how to look at it, the server, and its schema.

The demo prints the commands that show what it made (``eventkit status`` and ``psql`` on
its schema), says that the embedded server keeps running and how to stop it, then drops
its schema when asked to: with ``--drop-schema``, or on a terminal when the user answers
yes (the default is no). Without a terminal it asks nothing and prints the SQL instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg
import psycopg_pool
from psycopg import sql

from eventkit.infrastructure.settings import Settings, redact


def show_ending(
    settings: Settings, pool: psycopg_pool.ConnectionPool, url: str, *, drop: bool
) -> bool:
    """Print how to look at the demo's data and drop its schema if asked; False if the drop
    failed."""
    schema = settings.schema
    print(
        f"\nthe demo wrote into schema {schema} at {redact(url)}; "
        f"look at it from a shell{_activate()}:"
    )
    print(f"  EVENTKIT_SCHEMA={schema} eventkit status")
    print(
        f"  EVENTKIT_SCHEMA={schema} eventkit workers   # the views stopped before the"
        " reactions' orders: this catches them up (Ctrl-C to stop)"
    )
    query = f"SELECT topic, state FROM {schema}.stored_events_json LIMIT 5"
    print(f"  psql \"$(eventkit db url --show-password)\" -c '{query}'")
    if settings.database_url:
        print("  (with DATABASE_URL set as it was for the demo)")
    else:
        print(
            f"the embedded PostgreSQL server keeps running (data in {settings.home}); "
            "stop it with: eventkit db stop"
        )
    if drop:
        return _drop(pool, schema, "--drop-schema")
    if _is_interactive() and _ask(f"drop schema {schema} now? [y/N] "):
        return _drop(pool, schema, "as asked")
    print(f"the schema is kept; drop it when done: {_drop_command(schema)}")
    return True


def show_interrupted(
    settings: Settings, pool: psycopg_pool.ConnectionPool, url: str, *, drop: bool
) -> None:
    """After a run that did not finish: drop the schema if asked, else say how to."""
    schema = settings.schema
    if drop:
        _drop(pool, schema, "--drop-schema")
    else:
        print(
            f"\nthe demo stopped early; its schema {schema} at {redact(url)} is kept: "
            f"drop it with {_drop_command(schema)}"
        )


def _activate() -> str:
    """How to put ``eventkit`` on PATH, when the demo runs in a virtual environment."""
    if sys.prefix == sys.base_prefix:
        return ""
    venv = Path(sys.prefix)
    with_cwd = Path.cwd()
    shown = venv.relative_to(with_cwd) if venv.is_relative_to(with_cwd) else venv
    return f" (after `source {shown}/bin/activate`)"


def _drop_command(schema: str) -> str:
    return f"psql \"$(eventkit db url --show-password)\" -c 'DROP SCHEMA {schema} CASCADE'"


def _is_interactive() -> bool:
    """A person can answer: both standard input and output are a terminal."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _ask(question: str) -> bool:
    """Ask a yes/no question; anything but yes (or end of input, or Ctrl-C) is no."""
    try:
        answer = input(question)
    except (EOFError, KeyboardInterrupt):
        print()
        return False
    return answer.strip().lower() in {"y", "yes"}


def _drop(pool: psycopg_pool.ConnectionPool, schema: str, why: str) -> bool:
    """Drop the demo's schema and everything in it; say so, or say why it failed."""
    try:
        with pool.connection() as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    except psycopg.Error as e:
        print(f"demo: could not drop schema {schema}: {e}", file=sys.stderr)
        return False
    print(f"schema {schema} dropped ({why})")
    return True

"""Create and upgrade eventkit's schema from the versioned SQL files in ``sql/``.

Each file ``NNNN_name.sql`` is applied once, in order, inside one transaction with the
record of it, so a failed file leaves nothing half-done. Files are written without a schema
name; the runner sets ``search_path`` to the target schema. A lock per schema lets many
processes call :func:`migrate` at start-up at the same time; a schema that is up to date is
found so with reads alone, so a role without DDL rights may call it too.

:func:`schema_state` tells where a schema stands (``eventkit db current`` and ``db history``),
and :func:`require_current` refuses a schema that is missing or behind, for processes that
never migrate (read-only commands, and every process under ``EVENTKIT_MIGRATE=off``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from eventkit.infrastructure.errors import MigrationError, SchemaNotReadyError

SQL_DIR = Path(__file__).parent / "sql"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = SQL_DIR) -> list[Migration]:
    """Read the SQL files in ``directory``, in version order."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path} is not named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two SQL files in {directory} share a version: {versions}")
    return migrations


@dataclass(frozen=True)
class Applied:
    """A migration recorded as applied to a schema."""

    version: int
    name: str
    checksum: str
    applied_at: datetime

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class SchemaState:
    """Where a schema stands against a list of migrations."""

    schema: str
    exists: bool
    applied: list[Applied]
    pending: list[Migration]
    #: Applied migrations whose file has changed since (refused by :func:`migrate`).
    changed: list[Migration]
    #: Applied migrations this eventkit does not know (a newer release migrated the schema).
    unknown: list[Applied]

    @property
    def current(self) -> bool:
        return self.exists and not self.pending and not self.changed


def label(migration: Migration) -> str:
    return f"{migration.version:04d}_{migration.name}"


def schema_state(
    conn: psycopg.Connection[Any], schema: str, migrations: list[Migration] | None = None
) -> SchemaState:
    """Where ``schema`` stands, read without taking a lock or changing anything."""
    known = load_migrations() if migrations is None else migrations
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s),"
        " EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        "  WHERE n.nspname = %s AND c.relname = 'schema_migrations')",
        (schema, schema),
    ).fetchone()
    exists, has_table = (bool(row[0]), bool(row[1])) if row is not None else (False, False)
    applied: list[Applied] = []
    if has_table:
        try:
            rows = conn.execute(
                sql.SQL(
                    "SELECT version, name, checksum, applied_at FROM {}.schema_migrations"
                    " ORDER BY version"
                ).format(sql.Identifier(schema))
            ).fetchall()
        except psycopg.errors.InsufficientPrivilege as e:
            raise SchemaNotReadyError(
                f"role {conn.info.user!r} may not read schema {schema!r} "
                f"({e.diag.message_primary}); give it a role of `eventkit db roles`"
            ) from None
        applied = [Applied(*r) for r in rows]
    done = {a.version: a for a in applied}
    versions = {m.version for m in known}
    return SchemaState(
        schema=schema,
        exists=exists and has_table,
        applied=applied,
        pending=[m for m in known if m.version not in done],
        changed=[m for m in known if m.version in done and done[m.version].checksum != m.checksum],
        unknown=[a for a in applied if a.version not in versions],
    )


def require_current(
    conn: psycopg.Connection[Any], schema: str, migrations: list[Migration] | None = None
) -> SchemaState:
    """Return ``schema``'s state when it is up to date; else raise
    :class:`SchemaNotReadyError` saying what is missing and to run ``eventkit db migrate``."""
    state = schema_state(conn, schema, migrations)
    if not state.exists:
        raise SchemaNotReadyError(
            f"schema {schema!r} does not exist in this database (check EVENTKIT_SCHEMA); "
            "create it with `eventkit db migrate`"
        )
    if state.changed:
        raise _changed(state.changed[0], schema)
    if state.pending:
        names = ", ".join(label(m) for m in state.pending)
        raise SchemaNotReadyError(
            f"schema {schema!r} is behind this eventkit: {len(state.pending)} migration(s) "
            f"pending ({names}); run `eventkit db migrate` as the schema's owner"
        )
    return state


def _changed(migration: Migration, schema: str) -> MigrationError:
    return MigrationError(
        f"migration {label(migration)}.sql was changed after it was applied to schema "
        f"{schema!r}; add a new migration instead of editing an applied one"
    )


def migrate(
    conn: psycopg.Connection[Any], schema: str, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Bring ``schema`` up to date; return the migrations applied now (empty when current).

    ``migrations`` defaults to the SQL files shipped in ``infrastructure/sql``. A schema
    found up to date by reads alone is left alone: no lock, no DDL.
    """
    known = load_migrations() if migrations is None else migrations
    state = schema_state(conn, schema, known)
    if state.changed:
        raise _changed(state.changed[0], schema)
    if state.current:
        return []
    try:
        return _apply(conn, schema, known)
    except psycopg.errors.InsufficientPrivilege as e:
        raise MigrationError(
            f"role {conn.info.user!r} may not migrate schema {schema!r} "
            f"({e.diag.message_primary}); run `eventkit db migrate` as the schema's owner"
            + (", and EVENTKIT_MIGRATE=off for every other process" if state.exists else "")
        ) from None


def _apply(conn: psycopg.Connection[Any], schema: str, known: list[Migration]) -> list[Migration]:
    applied_now: list[Migration] = []
    with conn.transaction():
        # Serialise concurrent starts on this schema; released at commit.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"eventkit.migrate.{schema}",),
        )
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row[0]: row[1]
            for row in conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
        }
        for migration in known:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise _changed(migration, schema)
                continue
            try:
                conn.execute(migration.sql.encode())
            except psycopg.Error as e:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name}.sql failed on "
                    f"schema {schema!r}: {e}"
                ) from e
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied_now.append(migration)
    return applied_now

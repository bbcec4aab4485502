"""Create and upgrade eventkit's schema from the versioned SQL files in ``sql/``.

Each file ``NNNN_name.sql`` is applied once, in order, inside one transaction with the
record of it, so a failed file leaves nothing half-done. Files are written without a schema
name; the runner sets ``search_path`` to the target schema. A lock per schema lets many
processes call :func:`migrate` at start-up at the same time.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from eventkit.infrastructure.errors import MigrationError

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


def migrate(
    conn: psycopg.Connection[Any], schema: str, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Bring ``schema`` up to date; return the migrations applied now (empty when current).

    ``migrations`` defaults to the SQL files shipped in ``infrastructure/sql``.
    """
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
        for migration in load_migrations() if migrations is None else migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name}.sql was changed "
                        f"after it was applied to schema {schema!r}; add a new migration "
                        "instead of editing an applied one"
                    )
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

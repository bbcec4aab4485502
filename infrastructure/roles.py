"""Least-privilege roles for one schema: what ``eventkit db roles`` prints or runs.

Three roles without login, which the roles that log in are made members of
(``CREATE ROLE shop_service LOGIN PASSWORD '...' IN ROLE eventkit_app``):

- ``<prefix>_app``, an application: appends to the log and reads it, its snapshots,
  idempotency keys and data subjects' keys; never updates or deletes a stored event.
- ``<prefix>_worker``, ``eventkit workers``: what the application may do (reactions run its
  commands), and reads and writes the views, positions, leases, dead letters and the
  broker's tables; no more on the log than the application.
- ``<prefix>_reader``, a read-model consumer and the read-only commands: reads every table
  and view but the data subjects' keys.

None of them may create anything: only the schema's owner runs ``eventkit db migrate`` (which
also creates the application's views) and ``eventkit rebuild``. The owner's default
privileges give the worker and the reader their rights on tables it creates later (a
rebuilt view, a new projection's tables); a rebuild also copies the live view's grants onto
the new one (see eventkit.projections.rebuild). Run the statements as the schema's owner
after ``eventkit db migrate``, and again after each later one: they are idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from eventkit.infrastructure.errors import ConfigurationError
from eventkit.infrastructure.settings import is_plain_name


@dataclass(frozen=True)
class Roles:
    """The names of the three roles for one schema."""

    schema: str
    prefix: str

    def __post_init__(self) -> None:
        if not is_plain_name(self.prefix):
            raise ConfigurationError(
                f"role prefix {self.prefix!r} is not a plain name: use lower-case letters, "
                "digits and underscores, starting with a letter or '_'"
            )

    @property
    def app(self) -> str:
        return f"{self.prefix}_app"

    @property
    def worker(self) -> str:
        return f"{self.prefix}_worker"

    @property
    def reader(self) -> str:
        return f"{self.prefix}_reader"

    def statements(self) -> list[sql.SQL | sql.Composed]:
        """The SQL that creates the roles (when missing) and grants them their rights."""
        s = self.schema
        app, worker, reader = (sql.Identifier(r) for r in (self.app, self.worker, self.reader))
        everyone = sql.SQL(", ").join([app, worker, reader])

        def table(*names: str) -> sql.Composable:
            return sql.SQL(", ").join(sql.Identifier(s, n) for n in names)

        def say(text: str) -> sql.SQL:
            return sql.SQL("-- " + text)

        schema = sql.Identifier(s)
        statements: list[sql.SQL | sql.Composed] = [
            say(f"eventkit's roles for schema {s}: run as its owner after `eventkit db migrate`"),
            *(_create_role(r) for r in (self.app, self.worker, self.reader)),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, everyone),
            sql.SQL("GRANT SELECT ON {} TO {}").format(table("schema_migrations"), everyone),
            say("the application: appends to the log and reads it, never updates or deletes it"),
            sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(
                table("stored_events", "idempotency_keys", "subject_keys"), app
            ),
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(table("snapshots"), app),
            sql.SQL("GRANT SELECT ON {} TO {}").format(
                table("stored_events_json", "snapshots_json"), app
            ),
            sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, app),
            say("workers: the application's rights, and the views, positions, leases, ..."),
            sql.SQL("GRANT {} TO {}").format(app, worker),
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(
                schema, worker
            ),
            sql.SQL("REVOKE INSERT, UPDATE, DELETE ON {} FROM {}").format(
                table("schema_migrations"), worker
            ),
            sql.SQL("REVOKE UPDATE, DELETE ON {} FROM {}").format(
                table("stored_events", "idempotency_keys", "subject_keys"), worker
            ),
            sql.SQL("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
                schema, worker
            ),
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT, INSERT, UPDATE, DELETE "
                "ON TABLES TO {}"
            ).format(schema, worker),
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT USAGE, SELECT, UPDATE "
                "ON SEQUENCES TO {}"
            ).format(schema, worker),
            say("readers: every table and view but the data subjects' keys"),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema, reader),
            sql.SQL("REVOKE SELECT ON {} FROM {}").format(table("subject_keys"), reader),
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(
                schema, reader
            ),
        ]
        return statements

    def script(self) -> str:
        """The statements as a script for psql."""
        lines = []
        for statement in self.statements():
            text = statement.as_string(None)
            lines.append(text if text.startswith("--") else text + ";")
        return "\n".join(lines) + "\n"


def _create_role(name: str) -> sql.Composed:
    create = sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)).as_string(None)
    return sql.SQL(
        "DO $roles$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN "
        + create.replace("{", "{{").replace("}", "}}")
        + "; END IF; END $roles$"
    ).format(sql.Literal(name))

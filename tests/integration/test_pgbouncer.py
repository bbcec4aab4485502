"""Writers through a real PgBouncer in transaction pooling (runs where ``pgbouncer`` is
installed; skipped elsewhere).

docs/scaling.md says: writers and query consumers may go through transaction pooling; with
a PgBouncer older than 1.21 (no prepared statements in that mode), set
``EVENTKIT_PREPARED_STATEMENTS=off``. This checks that claim on the PgBouncer at hand: four
writer threads of one application, whose statements PgBouncer spreads over its server
connections, append and read back every event.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg_pool
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from eventkit.domain.shop.application import Shop
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.recorder import PostgresEventRecorder
from tests.integration.projection_support import stock_up, workload

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer") if os.path.exists(p)), None
)

pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason="no pgbouncer binary")

#: Server connections PgBouncer may open per database and user: fewer than the writers,
#: so that consecutive transactions of one client land on different server connections.
SERVER_CONNECTIONS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def bouncer(database_url: str) -> Iterator[str]:
    """A PgBouncer in transaction pooling in front of the test server; yields its URL."""
    assert PGBOUNCER is not None
    target = conninfo_to_dict(database_url)
    dbname = str(target.get("dbname", "postgres"))
    user = str(target.get("user", "postgres"))
    host = str(target.get("host", "127.0.0.1"))
    port = _free_port()
    # Readable by the unprivileged user PgBouncer switches to when started as root.
    folder = Path(tempfile.mkdtemp(prefix="eventkit-pgbouncer-"))
    folder.chmod(0o755)
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{dbname} = host={host} port={target.get('port', 5432)} dbname={dbname}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {SERVER_CONNECTIONS}\n"
        f"max_client_conn = 200\nadmin_users = {user}\n"
    )
    for f in folder.iterdir():
        f.chmod(0o644)
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        # The embedded server's socket is private to the user it runs as: be that user.
        owner = pwd.getpwuid(Path(host).stat().st_uid).pw_name if host.startswith("/") else None
        command[1:1] = ["-u", owner or "nobody"]
    log = folder / "pgbouncer.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"postgresql://{user}@127.0.0.1:{port}/{dbname}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                psycopg.connect(url, connect_timeout=1).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"pgbouncer did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _version() -> tuple[int, int]:
    assert PGBOUNCER is not None
    out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"PgBouncer (\d+)\.(\d+)", out.stdout)
    assert match is not None, out.stdout
    return int(match[1]), int(match[2])


def _write(shop: Shop) -> list[BaseException]:
    """Four writer threads, 15 orders each; the errors they raised."""
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        try:
            workload(shop, 15, seed)
        except BaseException as e:  # returned to the test
            errors.append(e)

    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    return errors


def _transactions(bouncer_url: str) -> int:
    """Transactions PgBouncer has passed on, from its admin console."""
    admin = bouncer_url.rsplit("/", 1)[0] + "/pgbouncer"
    with psycopg.connect(admin, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SHOW STATS", prepare=False)
        assert cur.description is not None
        columns = [c.name for c in cur.description]
        return sum(int(r[columns.index("total_xact_count")]) for r in cur.fetchall())


def test_writers_append_and_read_through_transaction_pooling_with_prepared_statements_off(
    bouncer: str, app_env: dict[str, str], schema: str, pool: psycopg_pool.ConnectionPool
) -> None:
    before = _transactions(bouncer)
    shop = Shop(env={**app_env, "DATABASE_URL": bouncer, "EVENTKIT_PREPARED_STATEMENTS": "off"})
    stock_up(shop)
    assert _write(shop) == []
    assert _transactions(bouncer) - before > 60  # the writes went through PgBouncer

    # Every stream's versions are 1..n, and the log reads the same through PgBouncer as
    # directly from the server.
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT originator_id, array_agg(originator_version ORDER BY originator_version)"
                " FROM {} GROUP BY originator_id"
            ).format(sql.Identifier(schema, "stored_events"))
        ).fetchall()
    assert sum(len(r[1]) for r in rows) > 60
    assert all(r[1] == list(range(1, len(r[1]) + 1)) for r in rows)
    through_bouncer = shop.recorder
    assert isinstance(through_bouncer, PostgresEventRecorder)
    direct = PostgresEventRecorder(pool, schema)
    read = through_bouncer.read_notifications(Position.ORIGIN, 100_000)
    assert [n.id for n in read] == [
        n.id for n in direct.read_notifications(Position.ORIGIN, 100_000)
    ]
    assert len(read) == sum(len(r[1]) for r in rows)


@pytest.mark.skipif(
    PGBOUNCER is None or _version() >= (1, 21),
    reason="PgBouncer 1.21 and later can keep protocol-level prepared statements",
)
def test_with_prepared_statements_on_an_older_pgbouncer_fails_the_writers(
    bouncer: str, app_env: dict[str, str]
) -> None:
    """Why the setting exists: a statement prepared on one server connection is executed on
    another, which has never heard of it (or is prepared again on one that has it)."""
    shop = Shop(env={**app_env, "DATABASE_URL": bouncer})
    errors = _write(shop)
    assert errors
    # "prepared statement ... does not exist" / "... already exists"
    assert all(getattr(e, "sqlstate", None) in ("26000", "42P05") for e in errors), errors

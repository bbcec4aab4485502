"""The CPU time a PostgreSQL server on this machine spends on the benchmark, from ``/proc``.

The server is found through a connection: its backend's parent is the postmaster. What
counts as the benchmark's: the backends of the writers' connections (the writers report
their pids) and the server's own processes (WAL writer, checkpointer, I/O workers,
autovacuum...), which work for every client. Other clients of a shared server are left
out, though the server's own processes also work for them. A window in which a writer's
connection was replaced gives no figure. Linux only; a remote server gives no probe.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

_PROC = Path("/proc")
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


class ServerCpu:
    """Samples the CPU time of one local PostgreSQL server's processes."""

    def __init__(self, url: str, conn: psycopg.Connection[Any], postmaster_pid: int) -> None:
        self.url = url
        self.conn = conn
        self.postmaster_pid = postmaster_pid
        self._tick = os.sysconf("SC_CLK_TCK")

    @classmethod
    def find(cls, url: str) -> ServerCpu | None:
        """A probe of the server at ``url``; ``None`` when it is not on this machine."""
        host = str(conninfo_to_dict(url).get("host") or "")
        if host and not host.startswith("/") and host not in _LOCAL_HOSTS:
            return None
        conn = _connect(url)
        stat = _read_stat(conn.info.backend_pid)
        if stat is None or stat[0] != "postgres":
            conn.close()
            return None
        return cls(url, conn, stat[1])

    def sample(self) -> dict[int, int]:
        """CPU ticks (user + system) so far of the postmaster and each of its children."""
        ticks = {}
        for entry in _PROC.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            stat = _read_stat(pid)
            if stat is not None and self.postmaster_pid in (pid, stat[1]):
                ticks[pid] = stat[2]
        return ticks

    def used_s(
        self, before: dict[int, int], after: dict[int, int], backend_pids: set[int]
    ) -> float | None:
        """CPU seconds used between two samples by ``backend_pids`` and the server itself.

        ``None`` when the server cannot say which processes are its own, or when one of
        ``backend_pids`` did not live through the window (its connection was replaced).
        """
        if not backend_pids <= before.keys() & after.keys():
            return None
        statement = "SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'"
        try:
            if self.conn.closed:
                self.conn = _connect(self.url)
            rows = self.conn.execute(statement).fetchall()
        except psycopg.OperationalError:
            # Connection lost (someone terminated backends): count this window as unknown.
            self.conn.close()
            return None
        ours = {row[0] for row in rows} | backend_pids | {self.postmaster_pid}
        used = sum(after[pid] - before[pid] for pid in ours if pid in before and pid in after)
        return used / self._tick

    def sample_whole(self) -> tuple[dict[int, int], int]:
        """:meth:`sample`, and the CPU ticks of the postmaster's children that have ended
        (``cutime + cstime``: a backend's whole life's CPU is added there once it is
        reaped), for :meth:`whole_s`."""
        return self.sample(), _reaped_ticks(self.postmaster_pid)

    def whole_s(
        self, before: tuple[dict[int, int], int], after: tuple[dict[int, int], int]
    ) -> float:
        """CPU seconds used between two :meth:`sample_whole` samples by every process of
        the server, whoever it worked for (the catch-up bench's server is its own: a
        primary's walsenders and a standby's startup process count too), backends that
        ended in the window included: a follower closes its own connection when it stops,
        before the second sample (without them a worker's view writes were missing, 0.3 us
        per event against the read's 1.6). A process started in the window counts from
        zero; one that ended counts from the first sample."""
        (live_before, reaped_before), (live_after, reaped_after) = before, after
        used = sum(ticks - live_before.get(pid, 0) for pid, ticks in live_after.items())
        ended = sum(ticks for pid, ticks in live_before.items() if pid not in live_after)
        used += reaped_after - reaped_before - ended
        return used / self._tick

    def close(self) -> None:
        self.conn.close()


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, application_name="eventkit-bench-probe")


def process_cpu_s(pids: Iterable[int]) -> float | None:
    """CPU seconds (user + system) used so far by the processes ``pids`` together; ``None``
    when one of them cannot be read (gone, or not Linux)."""
    total = 0
    for pid in pids:
        stat = _read_stat(pid)
        if stat is None:
            return None
        total += stat[2]
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float | None:
    """CPU seconds all of this machine's CPUs spent busy so far (``/proc/stat``: every
    state but idle and I/O wait), ``None`` where unreadable."""
    try:
        fields = (_PROC / "stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(f) for f in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _reaped_ticks(pid: int) -> int:
    """CPU ticks (``cutime + cstime``) of ``pid``'s children that have ended and that it
    has reaped; 0 when unreadable."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[13]) + int(fields[14])


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """A process's command name, parent pid and CPU ticks, or ``None`` when unreadable."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    # After the name: state, ppid, ..., utime (14th field overall), stime (15th).
    return name, int(fields[1]), int(fields[11]) + int(fields[12])

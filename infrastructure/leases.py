"""Leases: one owner per projection at a time, through a PostgreSQL advisory lock.

A worker opens a connection of its own, takes a session-level advisory lock keyed by the
schema and projection name on it, and runs every batch transaction of that projection on
that same connection. If the worker dies (kill -9, machine lost) its connection closes and
PostgreSQL releases the lock at once, so a waiting worker takes over. If the connection is
cut while the worker lives, the worker cannot commit another batch: the connection that
would commit it is the one that is gone. That is the fence.
https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

_KEY = "hashtextextended(%s, 0)"


def lease_name(schema: str, projection: str) -> str:
    return f"eventkit:{schema}:{projection}"


def try_acquire(conn: psycopg.Connection[Any], name: str) -> bool:
    """Take the lease ``name`` on ``conn`` if nobody holds it; return whether we hold it."""
    row = conn.execute(f"SELECT pg_try_advisory_lock({_KEY})", (name,)).fetchone()
    return bool(row and row[0])


def release(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(f"SELECT pg_advisory_unlock({_KEY})", (name,))


@dataclass(frozen=True)
class Holder:
    """The backend that holds a lease."""

    pid: int
    application_name: str
    client: str | None
    backend_start: datetime | None

    def describe(self) -> str:
        return (
            f"{self.application_name or 'unnamed'} (backend pid {self.pid}, client "
            f"{self.client or 'local socket'}, connected since {self.backend_start})"
        )


def holder(conn: psycopg.Connection[Any], name: str) -> Holder | None:
    """Who holds the lease ``name`` now, if anyone."""
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        f"AND ((l.classid::bigint << 32) | l.objid::bigint) = {_KEY}",
        (name,),
    ).fetchone()
    return None if row is None else Holder(row[0], row[1], row[2], row[3])

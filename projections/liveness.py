"""Signs of life of a process's loops, for ``/healthz``: has each loop turned lately?

A loop (a consumer's loop in a worker group, a standalone follower's, the group's
coordinator) calls :meth:`Beat.turn` on every turn and tells its beat which connection it
works on. A loop that has not turned for a while is stalled, unless it is waiting for the
database: connecting (the server is away) or inside a statement (blocked on a row lock a
frozen peer holds, say). Those are the database's troubles, which ``/readyz`` reports;
restarting this process would not cure them, so ``/healthz`` stays green. Telling which
is read from the connection's state in the client (libpq's transaction status): the check
never sends anything to the database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq


class Beat:
    """One loop's sign of life."""

    def __init__(self, name: str) -> None:
        #: What the loop runs (``projection order_summaries``, ``coordinator``).
        self.name = name
        #: ``time.monotonic()`` when the loop last turned.
        self.at = time.monotonic()
        self._conn: psycopg.Connection[Any] | None = None
        self._connecting = False
        self._waiting = 0
        self._lock = threading.Lock()

    def turn(self) -> None:
        self.at = time.monotonic()

    def connecting(self) -> None:
        """The loop is (re)connecting to the database, or waiting to try again."""
        with self._lock:
            self._conn, self._connecting = None, True
        self.turn()

    def connected(self, conn: psycopg.Connection[Any] | None) -> None:
        """The loop works on ``conn`` now (None: on no connection, and not connecting)."""
        with self._lock:
            self._conn, self._connecting = conn, False
        self.turn()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """The loop waits for the database on another connection (a pool's) meanwhile."""
        with self._lock:
            self._waiting += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting -= 1
            self.turn()

    def waiting_for_database(self) -> str | None:
        """What the loop waits for in the database, or None when it does not."""
        with self._lock:
            conn, connecting, waiting = self._conn, self._connecting, self._waiting
        if connecting:
            return "connecting to the database"
        if waiting:
            return "waiting for the database through a pool"
        if conn is None or conn.closed:
            return None
        if conn.info.transaction_status == pq.TransactionStatus.ACTIVE:
            return "waiting for a statement's answer from the database"
        return None

    def stalled(self, stall_s: float, now: float | None = None) -> str | None:
        """Why the loop counts as stalled (not turned for ``stall_s`` and not waiting for
        the database), or None."""
        idle_s = (time.monotonic() if now is None else now) - self.at
        if idle_s <= stall_s or self.waiting_for_database() is not None:
            return None
        return f"{self.name}: loop stalled for {idle_s:.0f} s"

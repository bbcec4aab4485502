"""Leases: one owner per partition of a consumer at a time, fenced by a generation.

A lease is a row of ``{schema}.leases``: (consumer, partition) -> owner, generation,
expiry. Its owner pushes the expiry forward on every heartbeat. Anyone may take a lease
that has no owner, has expired, or whose owner is known to be dead; taking it draws a new
generation from a sequence, so generations never repeat.

**Fencing.** Every batch transaction of a partition checks, before it commits, that its
lease row still names its owner and generation, and holds that row ``FOR SHARE`` until the
commit. A worker that lost its lease (paused past the expiry, cut off from the database,
or fenced by a rescale) therefore commits nothing more for that partition, and a takeover
waits for a batch already checked to commit, then reads the position that batch recorded.

Why rows and not session-level advisory locks (which eventkit used while a projection had
one partition): a paused process keeps its TCP connection, so PostgreSQL keeps its
advisory locks for as long as the pause lasts and nobody can take over; advisory locks
need one session per lock holder, so a process with many partitions would need many
connections; and a pooler in transaction mode (PgBouncer) loses session state. A lease
row expires by the database's clock, needs no session, and carries the generation the
fence checks. Advisory locks remain for one-off guards (one rebuild at a time).
https://www.postgresql.org/docs/current/explicit-locking.html#LOCKING-ROWS
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from eventkit.infrastructure.errors import PersistenceError

_KEY = "hashtextextended(%s, 0)"


class LeaseLostError(PersistenceError):
    """A worker's lease on a partition expired or was taken: it must not commit for it."""


@dataclass(frozen=True)
class Lease:
    """A partition's lease as its holder took it."""

    consumer: str
    partition: int
    owner: str
    generation: int


@dataclass(frozen=True)
class LeaseRow:
    """A lease as the table holds it now (for status)."""

    consumer: str
    partition: int
    owner: str | None
    generation: int
    acquired_at: datetime
    expires_in_s: float


class Leases:
    """Takes, renews, checks and gives back leases in ``{schema}.leases``."""

    def __init__(self, schema: str, ttl_s: float = 5.0) -> None:
        if ttl_s <= 0:
            raise ValueError(f"a lease's time to live must be positive, not {ttl_s}")
        self.schema = schema
        self.ttl_s = ttl_s
        table = sql.Identifier(schema, "leases")
        ttl = sql.SQL("clock_timestamp() + make_interval(secs => %s)")
        self._acquire = sql.SQL(
            "INSERT INTO {t} AS l (consumer, partition, owner, expires_at)"
            " VALUES (%s, %s, %s, {ttl})"
            " ON CONFLICT (consumer, partition) DO UPDATE SET owner = excluded.owner,"
            " generation = excluded.generation, acquired_at = excluded.acquired_at,"
            " expires_at = excluded.expires_at"
            " WHERE l.owner IS NULL OR l.expires_at < clock_timestamp()"
            " OR l.owner = ANY(%s) OR l.owner = excluded.owner"
            " RETURNING generation"
        ).format(t=table, ttl=ttl)
        self._renew = sql.SQL(
            "UPDATE {t} SET expires_at = {ttl} WHERE owner = %s"
            " RETURNING consumer, partition, generation"
        ).format(t=table, ttl=ttl)
        self._release = sql.SQL(
            "UPDATE {t} SET owner = NULL, expires_at = clock_timestamp()"
            " WHERE consumer = %s AND partition = %s AND owner = %s AND generation = %s"
        ).format(t=table)
        self._release_owners = sql.SQL(
            "UPDATE {t} SET owner = NULL, expires_at = clock_timestamp() WHERE owner = ANY(%s)"
        ).format(t=table)
        # Rendered once, as bytes: every batch of every follower sends the fence.
        self._fence = (
            sql.SQL(
                "SELECT l.owner, l.generation, l.expires_at < clock_timestamp(), p.partitions"
                " FROM {t} l JOIN {p} p ON p.consumer = l.consumer"
                " WHERE l.consumer = %s AND l.partition = %s FOR SHARE"
            )
            .format(t=table, p=sql.Identifier(schema, "partitioning"))
            .as_bytes(None)
        )
        self._revoke = sql.SQL("DELETE FROM {t} WHERE consumer = %s").format(t=table)
        self._rows = sql.SQL(
            "SELECT consumer, partition, owner, generation, acquired_at,"
            " extract(epoch FROM expires_at - clock_timestamp())::float8"
            " FROM {t} WHERE consumer = ANY(%s) ORDER BY consumer, partition"
        ).format(t=table)
        self._lock = sql.SQL(
            "SELECT 1 FROM {t} WHERE consumer = %s ORDER BY partition FOR UPDATE"
        ).format(t=table)

    def acquire(
        self,
        conn: psycopg.Connection[Any],
        consumer: str,
        partition: int,
        owner: str,
        *,
        dead_owners: Sequence[str] = (),
    ) -> Lease | None:
        """Take the lease if it is free, expired, held by one of ``dead_owners``, or held
        by ``owner`` itself under an older generation (a worker of ``owner`` that lost
        it, for example to a change of partitions): a new generation fences that one."""
        row = conn.execute(
            self._acquire, (consumer, partition, owner, self.ttl_s, list(dead_owners))
        ).fetchone()
        return None if row is None else Lease(consumer, partition, owner, int(row[0]))

    def renew(self, conn: psycopg.Connection[Any], owner: str) -> set[Lease]:
        """Push forward the expiry of every lease ``owner`` holds; return those leases."""
        rows = conn.execute(self._renew, (self.ttl_s, owner)).fetchall()
        return {Lease(r[0], r[1], owner, int(r[2])) for r in rows}

    def release(self, conn: psycopg.Connection[Any], lease: Lease) -> None:
        """Give the lease back, so the next worker takes it at once."""
        conn.execute(
            self._release, (lease.consumer, lease.partition, lease.owner, lease.generation)
        )

    def release_owners(self, conn: psycopg.Connection[Any], owners: Sequence[str]) -> int:
        """Free every lease held by ``owners`` (workers found dead)."""
        return conn.execute(self._release_owners, (list(owners),)).rowcount

    def fence(self, conn: psycopg.Connection[Any], lease: Lease, partitions: int) -> None:
        """Check, inside the caller's transaction, that ``lease`` still holds and that the
        consumer still has ``partitions`` partitions; keep both rows locked (``FOR
        SHARE``) until that transaction ends. Raises :class:`LeaseLostError`.
        """
        self.check_fence(self.send_fence(conn, lease), lease, partitions)

    def send_fence(self, conn: psycopg.Connection[Any], lease: Lease) -> psycopg.Cursor[Any]:
        """Send the fence's query without waiting for its row (in pipeline mode it then
        travels with the statements after it); :meth:`check_fence` reads it."""
        cursor = conn.cursor()
        cursor.execute(self._fence, (lease.consumer, lease.partition))
        return cursor

    def check_fence(self, cursor: psycopg.Cursor[Any], lease: Lease, partitions: int) -> None:
        """Raise :class:`LeaseLostError` unless the fence sent on ``cursor`` held."""
        row = cursor.fetchone()
        if row is not None and row[0] == lease.owner and row[1] == lease.generation:
            if not row[2] and row[3] == partitions:
                return
            why = (
                "expired (the worker did not renew it in time)"
                if row[2]
                else f"is for {row[3]} partitions now, not {partitions}"
            )
        elif row is None:
            why = "was revoked (the consumer's partitions were changed)"
        else:
            why = f"was taken by {row[0] or 'nobody yet'} (generation {row[1]})"
        raise LeaseLostError(
            f"{lease.consumer!r} partition {lease.partition}: worker {lease.owner}'s lease "
            f"(generation {lease.generation}) {why}; not committing"
        )

    def revoke(self, conn: psycopg.Connection[Any], consumer: str) -> None:
        """Delete every lease of ``consumer`` (after locking them with :meth:`lock`):
        every holder's next batch fails its fence, and leases are taken anew."""
        conn.execute(self._revoke, (consumer,))

    def lock(self, conn: psycopg.Connection[Any], consumer: str) -> None:
        """Lock ``consumer``'s lease rows in the caller's transaction: waits for the
        batches that have passed their fence to commit, and holds back new ones."""
        conn.execute(self._lock, (consumer,)).fetchall()

    def rows(self, conn: psycopg.Connection[Any], consumers: Sequence[str]) -> list[LeaseRow]:
        return [LeaseRow(*r) for r in conn.execute(self._rows, (list(consumers),)).fetchall()]


# -- advisory locks: one-off guards ----------------------------------------------------------


def lease_name(schema: str, name: str) -> str:
    """The name of an advisory lock that guards ``name`` (a one-off guard, not a lease)."""
    return f"eventkit:{schema}:{name}"


def try_acquire(conn: psycopg.Connection[Any], name: str) -> bool:
    """Take the session-level advisory lock ``name`` on ``conn`` if nobody holds it."""
    row = conn.execute(f"SELECT pg_try_advisory_lock({_KEY})", (name,)).fetchone()
    return bool(row and row[0])


def release(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(f"SELECT pg_advisory_unlock({_KEY})", (name,))


@dataclass(frozen=True)
class Holder:
    """The backend that holds an advisory lock."""

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
    """Who holds the advisory lock ``name`` now, if anyone."""
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        f"AND ((l.classid::bigint << 32) | l.objid::bigint) = {_KEY}",
        (name,),
    ).fetchone()
    return None if row is None else Holder(row[0], row[1], row[2], row[3])

"""A worker group: worker processes that share out the partitions of their consumers.

Every ``eventkit workers`` process is a member. A member's coordinator thread refreshes
the member's row in ``worker_members`` once a heartbeat, renews every lease it holds,
finds dead members (row expired, or database session gone: the process was killed) and
frees their leases, and computes which partitions are this member's: the live members
that run a consumer, sorted by id, take its partitions round robin (starting at an offset
from the consumer's name, so single-partition consumers spread over members too). Every
member computes the same plan from the same rows, so a joining member takes a fair share
within a heartbeat and the others hand those partitions over.

One loop thread per consumer turns the :class:`~projections.follower.Follower` of each
partition this member owns (one :meth:`Follower.step` each per round, the turn a
standalone follower's own loop takes too), each under its lease, on one connection: a
process holds 1 + (consumers) + (read pool) connections whatever its number of
partitions. A loop takes the leases of partitions planned for it once they are free, and
gives back the ones planned for others after the batch in hand.
A stopping member gives back every lease and deletes its row, so the others take over at
once; a killed one is found dead at the next heartbeat of any other member (its session
is gone), a paused or cut-off one when its row and leases expire. See
:mod:`infrastructure.leases` for the fence that stops a member that lost a lease from
committing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from eventkit.infrastructure import metrics
from eventkit.infrastructure.errors import DuplicateWorkerError, PersistenceError
from eventkit.infrastructure.leases import LeaseLostError, Leases
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.partitions import recorded_partitions
from eventkit.infrastructure.tracking import TrackingConflictError
from eventkit.projections.follower import (
    RECONNECT_MAX_DELAY_S,
    Follower,
    Idle,
    PollPolicy,
    connect,
)
from eventkit.projections.liveness import Beat
from eventkit.projections.projection import Consumer, Projection
from eventkit.projections.status import autovacuum_warning

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runnable:
    """A consumer a group runs, and how to make the follower of partition ``k`` of ``P``:
    ``make(k, P)``."""

    name: str
    cls: type[Consumer]
    make: Callable[[int, int], Follower]


@dataclass(frozen=True)
class Plan:
    """What a member works on for one consumer: of ``partitions``, the ``mine``."""

    partitions: int
    mine: frozenset[int]


def plan_for(name: str, partitions: int, members: Sequence[str], me: str) -> Plan:
    """The partitions of consumer ``name`` that member ``me`` works on, when ``members``
    (``me`` among them) run it: round robin over the sorted members."""
    ordered = sorted(set(members) | {me})
    offset = zlib.crc32(name.encode())
    return Plan(
        partitions,
        frozenset(k for k in range(partitions) if ordered[(k + offset) % len(ordered)] == me),
    )


#: An idle loop whose log head has not moved still reads every partition this often.
IDLE_ROUND_S = 0.5


def members_channel(schema: str) -> str:
    return f"eventkit_members_{schema}"[:63]


class WorkerGroup:
    """Runs ``consumers`` as one member of the group of worker processes on ``schema``."""

    def __init__(
        self,
        consumers: Sequence[Runnable],
        *,
        url: str,
        schema: str,
        worker_id: str,
        heartbeat_s: float = 1.0,
        lease_ttl_s: float = 5.0,
        notify_channel: str | None = None,
        poll: PollPolicy | None = None,
        read_pool_size: int = 0,
        durable_commits: bool = False,
        broker_connections: int = 0,
    ) -> None:
        """``read_pool_size`` and ``broker_connections``: the most connections of the
        pool the process reads the log through, and of the reactions' broker (the
        PostgreSQL broker's pool), for :attr:`connections`."""
        if heartbeat_s * 2 > lease_ttl_s:
            raise ValueError(
                f"the lease time to live ({lease_ttl_s} s) must be at least twice the "
                f"heartbeat ({heartbeat_s} s)"
            )
        self.consumers = list(consumers)
        #: Whether batch commits wait for the disk (see :func:`projections.follower.connect`);
        #: the coordinator's (membership, leases) always do.
        self.durable_commits = durable_commits
        self.url = url
        self.schema = schema
        self.worker_id = worker_id
        self.heartbeat_s = heartbeat_s
        self.leases = Leases(schema, lease_ttl_s)
        self.notify_channel = notify_channel
        self.poll = poll or PollPolicy()
        #: Connections this process holds at most: the coordinator's, one per consumer
        #: loop, the pool the workers read the log through (reaction handlers and the
        #: commands they run use it too) and the PostgreSQL broker's pool.
        self.connections = 1 + len(self.consumers) + read_pool_size + broker_connections
        self._plans: dict[str, Plan] = {}
        self._dead: list[str] = []
        self._lock = threading.Lock()
        #: Every partition's follower this member runs now, by (consumer, partition).
        self.followers: dict[tuple[str, int], Follower] = {}
        #: The signs of life of the coordinator and of each consumer's loop (/healthz).
        self.beats = {"": Beat("worker group coordinator")} | {
            c.name: Beat(f"{_kind(c)} {c.name}") for c in self.consumers
        }
        #: Why this process runs nothing (another live process has its worker id), or None.
        self.standby: str | None = None
        self._planned = threading.Event()  # the coordinator joined the group and planned
        self._table = sql.Identifier(schema, "worker_members")

    # -- running ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; then finish the batches in hand, give every lease
        back and leave the group."""
        loops_stop, coordinator_stop = threading.Event(), threading.Event()
        coordinator = threading.Thread(
            target=self._coordinate, args=(coordinator_stop,), name="eventkit-coordinator"
        )
        loops = [
            threading.Thread(
                target=self._loop, args=(c, loops_stop), name=f"eventkit-{c.name}", daemon=True
            )
            for c in self.consumers
        ]
        coordinator.start()
        for t in loops:
            t.start()
        # Wait in slices: a signal handler that sets ``stop`` runs in the main thread only
        # once it executes bytecode, and a blocked wait may never wake for a signal that
        # the kernel delivered to another thread (seen after SIGSTOP and SIGCONT).
        while not stop.wait(0.2):
            pass
        loops_stop.set()
        for t in loops:
            t.join()
        # The coordinator renews the leases until the loops have given them back.
        coordinator_stop.set()
        coordinator.join()

    # -- the coordinator ------------------------------------------------------------------------

    def _coordinate(self, stop: threading.Event) -> None:
        beat = self.beats[""]
        try:
            self._coordinate_until(stop, beat)
        finally:
            beat.connected(None)

    def _coordinate_until(self, stop: threading.Event, beat: Beat) -> None:
        delay = 0.1
        waiting = False  # for a live process with the same worker id to stop
        checked = False  # the server's autovacuum setting (once, not at every reconnect)
        while True:
            try:
                beat.connecting()
                with connect(self.url, self.worker_id, self.leases.ttl_s) as conn:
                    beat.connected(conn)
                    conn.execute(
                        sql.SQL("LISTEN {}").format(sql.Identifier(members_channel(self.schema)))
                    )
                    self._tick(conn, announce=True)
                    self.standby = None
                    if waiting:
                        logger.info(
                            "worker %s: the other process with this id is gone; joined the group",
                            self.worker_id,
                        )
                        waiting = False
                    if not checked:
                        checked = True
                        warning = autovacuum_warning(conn)
                        if warning is not None:
                            logger.warning("worker %s: %s", self.worker_id, warning)
                    delay = 0.1
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=self.heartbeat_s, stop_after=1):
                            pass  # a member joined or left: plan again now
                        self._tick(conn)
                        beat.turn()
                    self._leave(conn)
                    return
            except DuplicateWorkerError as e:
                # The coordinator serves every consumer of the process: no consumer label.
                metrics.ERRORS.labels("group", "", type(e).__name__).inc()
                self.standby = str(e)
                if not waiting:
                    logger.error("%s", e, extra={"error_class": type(e).__name__})
                    waiting = True
                beat.connected(None)  # alive, waiting for the other process to stop
                if stop.wait(self.heartbeat_s):
                    return
            except Exception as e:
                beat.connecting()  # the connection is gone: waiting for the database
                metrics.ERRORS.labels("group", "", type(e).__name__).inc()
                if stop.is_set():
                    return
                logger.warning(
                    "worker %s: coordinator: %s: %s; reconnecting in %.1f s",
                    self.worker_id,
                    type(e).__name__,
                    e,
                    delay,
                    exc_info=not isinstance(e, psycopg.OperationalError),
                    extra={"error_class": type(e).__name__},
                )
                beat.connecting()
                stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)

    def _tick(self, conn: psycopg.Connection[Any], *, announce: bool = False) -> None:
        names = [c.name for c in self.consumers]
        with conn.transaction():
            # The member row is this process's, or free to take: its process is gone (its
            # heartbeat expired or its session ended). A live process of another host or
            # pid under the same id keeps it, and this one waits (DuplicateWorkerError).
            joined = conn.execute(
                sql.SQL(
                    "INSERT INTO {} AS m (worker_id, host, pid, backend_pid, consumers,"
                    " connections, expires_at) VALUES (%s, %s, %s, pg_backend_pid(), %s, %s,"
                    " clock_timestamp() + make_interval(secs => %s))"
                    " ON CONFLICT (worker_id) DO UPDATE SET host = excluded.host,"
                    " pid = excluded.pid, backend_pid = excluded.backend_pid,"
                    " consumers = excluded.consumers, connections = excluded.connections,"
                    " heartbeat_at = clock_timestamp(), expires_at = excluded.expires_at"
                    " WHERE (m.host, m.pid) = (excluded.host, excluded.pid)"
                    " OR m.expires_at <= clock_timestamp()"
                    " OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.backend_pid)"
                    " RETURNING 1"
                ).format(self._table),
                (
                    self.worker_id,
                    socket.gethostname(),
                    os.getpid(),
                    names,
                    self.connections,
                    self.leases.ttl_s,
                ),
            ).fetchone()
            if joined is None:
                raise self._duplicate(conn)
            self.leases.renew(conn, self.worker_id)
            rows = conn.execute(
                sql.SQL(
                    "SELECT worker_id, consumers, expires_at > clock_timestamp() AND EXISTS"
                    " (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.backend_pid)"
                    " FROM {} m"
                ).format(self._table)
            ).fetchall()
            dead = [r[0] for r in rows if not r[2] and r[0] != self.worker_id]
            if dead:
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE worker_id = ANY(%s)").format(self._table),
                    (dead,),
                )
                freed = self.leases.release_owners(conn, dead)
                logger.warning(
                    "worker %s: member(s) %s found dead (heartbeat expired or session gone); "
                    "freed %d lease(s)",
                    self.worker_id,
                    ", ".join(dead),
                    freed,
                )
            counts = recorded_partitions(conn, self.schema)
            if announce or dead:
                conn.execute("SELECT pg_notify(%s, %s)", (members_channel(self.schema), "plan"))
        live = [(r[0], set(r[1])) for r in rows if r[2] or r[0] == self.worker_id]
        plans = {
            c.name: plan_for(
                c.name,
                counts.get(c.name, c.cls.partitions),
                [w for w, consumers in live if c.name in consumers],
                self.worker_id,
            )
            for c in self.consumers
        }
        with self._lock:
            changed = plans != self._plans
            self._plans = plans
            self._dead = dead
        if changed:
            logger.info(
                "worker %s: %d live member(s); plan: %s",
                self.worker_id,
                len(live),
                "; ".join(
                    f"{n} {sorted(p.mine)} of {p.partitions}" for n, p in sorted(plans.items())
                ),
            )
        self._planned.set()

    def _duplicate(self, conn: psycopg.Connection[Any]) -> DuplicateWorkerError:
        row = conn.execute(
            sql.SQL(
                "SELECT host, pid, extract(epoch FROM clock_timestamp() - heartbeat_at)::float8"
                " FROM {} WHERE worker_id = %s"
            ).format(self._table),
            (self.worker_id,),
        ).fetchone()
        other = "another process" if row is None else f"pid {row[1]} on host {row[0]}"
        age = "" if row is None else f", heartbeat {row[2]:.1f} s ago"
        return DuplicateWorkerError(
            f"worker id {self.worker_id!r} is in use by {other} (alive{age}); this process "
            "(pid {pid} on host {host}) runs nothing until that one stops. Give each worker "
            "process its own --id, or leave --id out".format(
                pid=os.getpid(), host=socket.gethostname()
            )
        )

    def _leave(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE worker_id = %s").format(self._table),
                (self.worker_id,),
            )
            self.leases.release_owners(conn, [self.worker_id])
            conn.execute("SELECT pg_notify(%s, %s)", (members_channel(self.schema), "left"))
        logger.info("worker %s left the group", self.worker_id)

    def not_ready(self) -> str | None:
        """Why this member works on nothing yet (readiness), or None."""
        if self.standby is not None:
            return f"standby: {self.standby}"
        if not self._planned.is_set():
            return f"worker {self.worker_id} has not joined the group yet"
        return None

    def current_beats(self) -> list[Beat]:
        """The signs of life of this process's loops (for /healthz)."""
        return list(self.beats.values())

    def current_followers(self) -> list[Follower]:
        """The partitions' followers this member runs now (for health checks)."""
        with self._lock:
            return list(self.followers.values())

    def plan(self, name: str) -> tuple[Plan | None, list[str]]:
        with self._lock:
            return self._plans.get(name), list(self._dead)

    # -- one consumer's loop ----------------------------------------------------------------------

    def _loop(self, consumer: Runnable, stop: threading.Event) -> None:
        beat = self.beats[consumer.name]
        try:
            self._loop_until(consumer, stop, beat)
        finally:
            beat.connected(None)

    def _loop_until(self, consumer: Runnable, stop: threading.Event, beat: Beat) -> None:
        followers: dict[int, Follower] = {}
        state = _LoopState(
            Idle(self.poll, self.notify_channel, _kind(consumer), consumer.name), beat
        )
        delay = 0.1
        while not self._planned.wait(0.2):  # the coordinator has not joined the group yet
            beat.turn()
            if stop.is_set():
                return
        while not stop.is_set():
            try:
                beat.connecting()
                with connect(
                    self.url,
                    self.worker_id,
                    self.leases.ttl_s,
                    durable_commits=self.durable_commits,
                ) as conn:
                    beat.connected(conn)
                    state.idle.listen(conn)
                    for f in followers.values():  # after a reconnect: the leases are rows
                        if f.lease is not None:
                            f.attach(conn, f.lease)
                    delay = 0.1
                    self._work(consumer, conn, followers, state, stop)
                    for k in list(followers):
                        followers.pop(k).detach(conn)
                        self._forget(consumer, k)
                    return
            except Exception as e:
                beat.connecting()  # the connection is gone: waiting for the database
                metrics.ERRORS.labels("group", consumer.name, type(e).__name__).inc()
                if stop.is_set():
                    for k in list(followers):
                        followers.pop(k).detach(None)
                        self._forget(consumer, k)
                    return
                logger.warning(
                    "%s: %s: %s; reconnecting in %.1f s",
                    consumer.name,
                    type(e).__name__,
                    e,
                    delay,
                    exc_info=not isinstance(e, psycopg.OperationalError | PersistenceError),
                    extra={"consumer": consumer.name, "error_class": type(e).__name__},
                )
                beat.connecting()
                stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)

    def _work(
        self,
        consumer: Runnable,
        conn: psycopg.Connection[Any],
        followers: dict[int, Follower],
        state: _LoopState,
        stop: threading.Event,
    ) -> None:
        idle = state.idle
        seen: Position | None = None  # the log's head when every partition last caught up
        quiet = False  # the last round read nothing: look at the head before the next one
        rounds_at = 0.0
        while not stop.is_set():
            state.beat.turn()
            self._reconcile(consumer, conn, followers, state)
            # Catching up, no look at the head: it costs a query per round and is only
            # needed once a round comes back empty.
            head = None
            if quiet and followers:
                with state.beat.waiting():
                    # Where the followers read: a replica's head, when they read one.
                    head = next(iter(followers.values())).reader.head()
            if seen is not None and head == seen and time.monotonic() - rounds_at < IDLE_ROUND_S:
                # Idle: one look at the log's head instead of a read per partition; every
                # partition still turns twice a second (dead letters to retry, its state).
                idle.wait(conn, stop)
                continue
            rounds_at = time.monotonic()
            did = False
            for k, f in list(followers.items()):
                if stop.is_set():
                    break
                try:
                    did = f.step(conn, stop) or did
                except LeaseLostError as e:
                    logger.warning("%s: %s", consumer.name, e)
                    followers.pop(k).detach(None)
                    self._forget(consumer, k)
                except TrackingConflictError as e:
                    logger.warning("%s: %s; reading its position again", consumer.name, e)
                    if f.lease is not None:
                        f.attach(conn, f.lease)
            if did:
                seen, quiet = None, False
                idle.busy()
                continue
            # Every partition read up to at least this head (None after a busy round: the
            # next round, with the head looked at first, confirms) and found nothing.
            seen, quiet = head, True
            idle.wait(conn, stop)

    def _reconcile(
        self,
        consumer: Runnable,
        conn: psycopg.Connection[Any],
        followers: dict[int, Follower],
        state: _LoopState,
    ) -> None:
        """Give back partitions planned for others; take free ones planned for us."""
        plan, dead = self.plan(consumer.name)
        if plan is None:
            return
        if plan.partitions != state.partitions:
            for k in list(followers):
                followers.pop(k).detach(conn)
                self._forget(consumer, k)
            state.partitions = plan.partitions
        for k in list(followers):
            if k not in plan.mine:
                followers.pop(k).detach(conn)
                self._forget(consumer, k)
        wanted = plan.mine - followers.keys()
        if not wanted or (
            plan == state.tried_plan and time.monotonic() - state.tried_at < self.poll.lease_wait_s
        ):
            return
        state.tried_plan, state.tried_at = plan, time.monotonic()
        for k in sorted(wanted):
            lease = self.leases.acquire(conn, consumer.name, k, self.worker_id, dead_owners=dead)
            if lease is None:
                continue  # its owner has not handed it over yet
            follower = consumer.make(k, plan.partitions)
            follower.beat = state.beat  # its waits for the database are the loop's
            follower.attach(conn, lease)  # the coordinator renews the lease: see _tick
            followers[k] = follower
            with self._lock:
                self.followers[(consumer.name, k)] = follower

    def _forget(self, consumer: Runnable, partition: int) -> None:
        with self._lock:
            self.followers.pop((consumer.name, partition), None)


def _kind(consumer: Runnable) -> str:
    return "projection" if issubclass(consumer.cls, Projection) else "reaction"


@dataclass
class _LoopState:
    """One consumer's loop: how it waits, and what it last planned and tried."""

    idle: Idle
    beat: Beat
    partitions: int | None = None
    tried_plan: Plan | None = None
    tried_at: float = 0.0

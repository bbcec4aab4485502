"""Rebuild a projection beside the live one, then swap it in atomically.

1. A :class:`~projections.follower.Follower` fills copies of the view's tables
   (``<table>__rebuild``) from the start of the log, under its own tracking name
   (``<name>#rebuild``), while the live followers keep following new events and readers
   keep querying the live tables.
2. When the copy has caught up, one transaction locks the live and the new tables, applies
   what arrived meanwhile, renames the live tables away and the new ones into their place,
   and moves the position (and the copy's dead letters) to the live name. Readers wait for
   that lock for as long as the last stretch takes, then read the new tables: they never
   see an empty or half-built view.
3. The old tables are dropped.

A live follower whose batch was waiting on the lock finds, at its compare-and-set of the
position, that the position moved; its transaction rolls back (so nothing is applied twice
to the new tables) and it carries on from the rebuilt position.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from uuid import UUID

import psycopg
from eventsourcing.persistence import Mapper
from psycopg import sql

from eventkit.infrastructure.deadletters import DeadLetters
from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.leases import Leases, holder, lease_name, try_acquire
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.partitions import Partition, recorded_partitions, set_partitions
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.follower import (
    BatchReport,
    Follower,
    FollowerOptions,
    PollPolicy,
    RetryPolicy,
)
from eventkit.projections.projection import (
    Projection,
    create_tables,
    drop_tables,
    table_identifiers,
)

logger = logging.getLogger(__name__)

REBUILD_SUFFIX = "__rebuild"
OLD_SUFFIX = "__old"


def rebuild_name(projection: type[Projection]) -> str:
    return f"{projection.name}#rebuild"


class RebuildError(EventkitError):
    """A rebuild could not start or finish."""


@dataclass(frozen=True)
class RebuildResult:
    projection: str
    position: Position
    applied: int
    parked: int
    seconds: float


def rebuild(
    projection: type[Projection],
    *,
    url: str,
    schema: str,
    recorder: PostgresEventRecorder,
    mapper: Mapper[UUID],
    worker_id: str,
    batch_size: int = 5000,
    retry: RetryPolicy | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    stop: threading.Event | None = None,
    partitions: int | None = None,
    reader: PostgresEventRecorder | None = None,
) -> RebuildResult:
    """Build ``projection`` anew from the start of the log and swap it in (see module doc);
    with ``partitions``, the swapped-in view is followed in that many partitions. With
    ``reader`` (a streaming replica's recorder) the catch-up reads the log there, then
    the replica's lag from ``recorder``, and the swap's last stretch from ``recorder``."""
    if partitions is not None:
        Partition(projection.partition_key, partitions)  # refuse a bad number up front
    import time

    started = time.monotonic()
    stop = stop or threading.Event()
    name = rebuild_name(projection)
    with psycopg.connect(url, autocommit=True, application_name=f"eventkit:{worker_id}") as conn:
        # One rebuild of a projection at a time. This lock is not the rebuild's follower's
        # lease (which it takes on its own connection below).
        guard = lease_name(schema, f"{projection.name}#rebuild-guard")
        if not try_acquire(conn, guard):
            owner = holder(conn, guard)
            raise RebuildError(
                f"a rebuild of {projection.name!r} is already running: "
                f"{owner.describe() if owner else 'another process'}"
            )
        _discard_leftovers(conn, schema, projection)

        counts = {"applied": 0, "parked": 0}

        def count(report: BatchReport) -> None:
            counts["applied"] += report.applied
            counts["parked"] += report.parked
            if on_batch is not None:
                on_batch(report)

        follower = Follower(
            name,
            ProjectionApplier(projection(), schema, mapper=mapper, table_suffix=REBUILD_SUFFIX),
            Partition(),
            FollowerOptions(
                url=url,
                recorder=recorder,
                worker_id=worker_id,
                batch_size=batch_size,
                retry=retry or RetryPolicy(),
                poll=PollPolicy(min_interval_s=0.001, max_interval_s=0.01, lease_wait_s=0.05),
                state="rebuilding",
                on_batch=count,
                reader=reader,
            ),
        )
        # The rebuild's follower takes its own lease on its own connection; this
        # connection keeps holding the "one rebuild at a time" lock meanwhile.
        thread = threading.Thread(target=_run_until_caught_up, args=(follower, stop))
        thread.start()
        try:
            while thread.is_alive():  # in slices: Ctrl-C reaches the main thread
                thread.join(0.2)
            if stop.is_set():
                raise RebuildError(
                    f"rebuild of {projection.name!r} interrupted; nothing was swapped, and "
                    "its copy and position were dropped"
                )
            position = _swap(conn, follower, projection, schema, partitions)
        except BaseException:
            # Interrupted (Ctrl-C, stop) or failed before the swap committed: leave nothing
            # behind, neither the copy's tables nor its tracking row and dead letters.
            stop.set()
            thread.join()
            try:
                _discard_leftovers(conn, schema, projection)
            except psycopg.Error as e:
                logger.warning(
                    "rebuild of %s stopped; could not drop its copy (%s): the next rebuild "
                    "of it drops it first",
                    projection.name,
                    e,
                )
            else:
                logger.info("rebuild of %s stopped; dropped its copy", projection.name)
            raise
        drop_tables(conn, schema, projection, OLD_SUFFIX)
    logger.info("rebuilt %s up to %s and swapped it in", projection.name, position)
    return RebuildResult(
        projection.name, position, counts["applied"], counts["parked"], time.monotonic() - started
    )


def _run_until_caught_up(follower: Follower, stop: threading.Event) -> None:
    _follow_until_caught_up(follower, stop)
    if follower.reader is not follower.recorder and not stop.is_set():
        # Caught up with the replica: read what it has not replayed yet from the primary,
        # before the swap's locks, so that the locked stretch stays short.
        follower.reader = follower.recorder
        follower.caught_up.clear()
        _follow_until_caught_up(follower, stop)


def _follow_until_caught_up(follower: Follower, stop: threading.Event) -> None:
    inner = threading.Event()

    def watch() -> None:
        while not (follower.caught_up.wait(0.05) or stop.is_set()):
            pass
        inner.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    follower.run(inner)


def _discard_leftovers(
    conn: psycopg.Connection[object], schema: str, projection: type[Projection]
) -> None:
    """Remove what an interrupted earlier rebuild left behind."""
    with conn.transaction():
        drop_tables(conn, schema, projection, REBUILD_SUFFIX)
        drop_tables(conn, schema, projection, OLD_SUFFIX)
        Tracking(schema).forget(conn, rebuild_name(projection))
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE consumer = %s").format(
                sql.Identifier(schema, "dead_letters")
            ),
            (rebuild_name(projection),),
        )


#: The table privileges a rebuild carries over (aclexplode's names).
_PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
)


def copy_grants(
    conn: psycopg.Connection[object], source: sql.Identifier, target: sql.Identifier
) -> None:
    """Grant on ``target`` what was granted on ``source`` to roles other than ``target``'s
    owner (a read-model consumer's role keeps reading the view a rebuild replaces)."""
    found = conn.execute(
        sql.SQL(
            "SELECT a.privilege_type, a.grantee = 0, pg_get_userbyid(a.grantee), a.is_grantable"
            " FROM pg_class c, aclexplode(c.relacl) a"
            " WHERE c.oid = {}::regclass"
            " AND a.grantee <> (SELECT relowner FROM pg_class WHERE oid = {}::regclass)"
        ).format(sql.Literal(source.as_string(None)), sql.Literal(target.as_string(None)))
    ).fetchall()
    rows = cast("list[tuple[str, bool, str, bool]]", found)
    for privilege, public, grantee, grantable in rows:
        if privilege not in _PRIVILEGES:  # pragma: no cover - a privilege of a newer server
            continue
        conn.execute(
            sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(privilege),
                target,
                sql.SQL("PUBLIC") if public else sql.Identifier(grantee),
                sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )


def _swap(
    conn: psycopg.Connection[object],
    follower: Follower,
    projection: type[Projection],
    schema: str,
    partitions: int | None,
) -> Position:
    live = table_identifiers(schema, projection)
    new = table_identifiers(schema, projection, REBUILD_SUFFIX)
    tracking = Tracking(schema)
    with conn.transaction():
        create_tables(conn, schema, projection)  # a live view that never ran has none yet
        # Lock in one fixed order (live tables, then the new ones) to keep deadlocks out.
        locked = [live[t.name] for t in projection.tables] + [
            new[t.name] for t in projection.tables
        ]
        conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.SQL(", ").join(locked))
        )
        # Apply what arrived since the copy caught up, inside this transaction.
        position = follower.finish(conn)
        for t in projection.tables:
            copy_grants(conn, live[t.name], new[t.name])
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    live[t.name], sql.Identifier(t.name + OLD_SUFFIX)
                )
            )
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(new[t.name], sql.Identifier(t.name))
            )
        # Every partition of the live name starts from the rebuilt position. A new number
        # of partitions revokes the leases: each worker's next batch fails its fence
        # (which checks the number too) and the group takes the new partitions.
        count = recorded_partitions(conn, schema).get(projection.name, projection.partitions)
        if partitions is not None and partitions != count:
            leases = Leases(schema)
            leases.lock(conn, projection.name)
            set_partitions(conn, schema, projection.name, partitions)
            leases.revoke(conn, projection.name)
            count = partitions
        for k in range(count):
            tracking.set(conn, projection.name, position, k)
        if count == 1:  # the rebuild's one fold covers the live view's one partition
            tracking.take_fold(conn, projection.name, follower.name)
        tracking.forget(conn, projection.name, from_partition=count)
        tracking.forget(conn, follower.name)
        DeadLetters(schema).rename_consumer(conn, follower.name, projection.name)
    return position

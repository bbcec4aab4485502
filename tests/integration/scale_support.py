"""The scale-out tests' projection, and a worker process that runs it in a worker group.

``Audit`` writes one row per order event with the lease it was applied under (partition,
owner, generation), the order it was applied in (``seq``) and when (``applied_at``), so a
test can check per-stream order, exactly-once, and that no worker committed after losing
its lease. Run a worker with ``python -m tests.integration.scale_support --id W``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg_pool
from psycopg import sql

from eventkit.bootstrap import stop_on_signals
from eventkit.domain.shop.orders import Order
from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.partitions import Partition
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.follower import Follower, FollowerOptions, PollPolicy, RetryPolicy
from eventkit.projections.group import Runnable, WorkerGroup
from eventkit.projections.projection import Context, Projection, Table, handles

ROOT = Path(__file__).resolve().parents[2]


class Audit(Projection):
    """One row per order event, with the lease it was applied under."""

    name = "audit"
    partitions = 8
    tables = (
        Table(
            "audit",
            "CREATE TABLE {table} (seq bigint GENERATED ALWAYS AS IDENTITY, stream uuid,"
            " version bigint, partition integer, owner text, generation bigint,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
            " PRIMARY KEY (stream, version))",
        ),
    )

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        self._record(event, context)

    @handles
    def paid(self, event: Order.Paid, context: Context) -> None:
        self._record(event, context)

    @handles
    def shipped(self, event: Order.Shipped, context: Context) -> None:
        self._record(event, context)

    @handles
    def cancelled(self, event: Order.Cancelled, context: Context) -> None:
        self._record(event, context)

    def _record(self, event: Order.Event, context: Context) -> None:
        lease = context.lease
        context.execute(
            "INSERT INTO {audit} (stream, version, partition, owner, generation)"
            " VALUES (%s, %s, %s, %s, %s)",
            (
                event.originator_id,
                event.originator_version,
                None if lease is None else lease.partition,
                None if lease is None else lease.owner,
                None if lease is None else lease.generation,
            ),
        )


def start(
    worker_id: str,
    database_url: str,
    schema: str,
    *,
    heartbeat_s: float = 0.5,
    lease_ttl_s: float = 3.0,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A worker process of the group, logging to ``log``."""
    env = {**os.environ, "DATABASE_URL": database_url, "EVENTKIT_SCHEMA": schema}
    command = [
        sys.executable,
        "-m",
        "tests.integration.scale_support",
        "--id",
        worker_id,
        "--heartbeat",
        str(heartbeat_s),
        "--lease-ttl",
        str(lease_ttl_s),
    ]
    with open(os.devnull if log is None else log, "ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)


def leases(
    pool: psycopg_pool.ConnectionPool, schema: str, name: str = Audit.name
) -> dict[int, tuple[str, int, Any]]:
    """partition -> (owner, generation, acquired_at) of the live leases of ``name``."""
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT partition, owner, generation, acquired_at FROM {} WHERE consumer ="
                " %s AND owner IS NOT NULL AND expires_at > clock_timestamp()"
            ).format(sql.Identifier(schema, "leases")),
            (name,),
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def wait_for(what: str, check: Any, timeout: float = 30.0) -> float:
    """Poll ``check()`` until it is true; return the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def owners(
    pool: psycopg_pool.ConnectionPool, schema: str, name: str = Audit.name
) -> dict[str, int]:
    """How many live leases of ``name`` each worker holds."""
    counts: dict[str, int] = defaultdict(int)
    for owner, _, _ in leases(pool, schema, name).values():
        counts[owner] += 1
    return dict(counts)


def check_view(pool: psycopg_pool.ConnectionPool, schema: str) -> int:
    """The view holds each order event of the log exactly once, each stream's in version
    order, and nothing is parked; return the number of rows."""
    with pool.connection() as conn:
        logged = conn.execute(
            sql.SQL(
                "SELECT originator_id, originator_version FROM {} WHERE topic = ANY(%s)"
            ).format(sql.Identifier(schema, "stored_events")),
            (Audit.topics(),),
        ).fetchall()
        rows = conn.execute(
            sql.SQL("SELECT stream, version FROM {} ORDER BY seq").format(
                sql.Identifier(schema, "audit")
            )
        ).fetchall()
        dead = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "dead_letters"))
        ).fetchone()
    assert dead is not None
    assert dead[0] == 0, f"{dead[0]} dead letters"
    assert len(rows) == len(set(rows)), "an event was applied twice"
    missing = set(logged) - set(rows)
    extra = set(rows) - set(logged)
    assert not missing, f"{len(missing)} events never applied"
    assert not extra, f"{len(extra)} rows for events not in the log"
    last: dict[UUID, int] = {}
    for stream, version in rows:
        assert last.get(stream, 0) < version, f"stream {stream}: v{version} after v{last[stream]}"
        last[stream] = version
    return len(rows)


def caught_up(pool: psycopg_pool.ConnectionPool, schema: str) -> bool:
    from eventkit.projections.status import partition_status

    with pool.connection() as conn:
        status = partition_status(conn, schema, Audit)
    return all(r.lag_events == 0 for r in status.rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", required=True)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.id} %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env()
    pool, url = shared_pool(settings)
    mapper = PydanticMapper()
    poll = PollPolicy(min_interval_s=0.005, max_interval_s=0.1, lease_wait_s=0.1)
    options = FollowerOptions(
        url=url,
        recorder=PostgresEventRecorder(pool, settings.schema),
        worker_id=args.id,
        batch_size=50,
        retry=RetryPolicy(max_attempts=3, first_delay_s=0.01, max_delay_s=0.05),
        poll=poll,
        lease_ttl_s=args.lease_ttl,
    )

    def make(partition: int, partitions: int) -> Follower:
        applier = ProjectionApplier(Audit(), settings.schema, mapper=mapper)
        key = Partition(Audit.partition_key, partitions, partition)
        return Follower(Audit.name, applier, key, options)

    group = WorkerGroup(
        [Runnable(Audit.name, Audit, make)],
        url=url,
        schema=settings.schema,
        worker_id=args.id,
        heartbeat_s=args.heartbeat,
        lease_ttl_s=args.lease_ttl,
        poll=poll,
        read_pool_size=settings.pool_max_size,
    )
    group.run(stop_on_signals())


if __name__ == "__main__":
    main()

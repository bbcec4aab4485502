"""Changing a consumer's number of partitions while its workers run.

Splitting P partitions into a multiple of P is online and exact: every event of new
partition j was in old partition j mod P (see :mod:`infrastructure.partitions`), so new
partition j starts from old partition j mod P's recorded position. One transaction locks
the consumer's lease rows (waiting for batches that have passed their fence), records the
new positions and number, and revokes the leases: every old worker's next batch fails its
fence, and the worker group takes the new partitions within a heartbeat.

Any other change (merging, or 4 -> 6) is a rebuild into the new number beside the live
view (``eventkit rebuild NAME --partitions P``): zero downtime, and exact because the
rebuild applies everything from position zero once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.leases import Leases
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.partitions import MAX_PARTITIONS, recorded_partitions, set_partitions
from eventkit.infrastructure.tracking import Tracking


class RescaleError(EventkitError):
    """A change of partitions that cannot be made online."""


@dataclass(frozen=True)
class Split:
    name: str
    before: int
    after: int
    positions: dict[int, Position]


def split(
    conn: psycopg.Connection[Any], schema: str, name: str, default: int, partitions: int
) -> Split:
    """Split consumer ``name`` (``default`` partitions unless recorded) into
    ``partitions``, a multiple of its current number, online."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise RescaleError(f"{name!r}: partitions must be 1..{MAX_PARTITIONS}, not {partitions}")
    leases = Leases(schema)
    tracking = Tracking(schema)
    with conn.transaction():
        conn.execute(
            f'LOCK TABLE "{schema}".partitioning IN SHARE ROW EXCLUSIVE MODE'  # one at a time
        )
        before = recorded_partitions(conn, schema).get(name, default)
        if partitions == before:
            return Split(name, before, before, tracking.positions(conn, name))
        if partitions % before:
            raise RescaleError(
                f"{name!r} has {before} partition(s); an online change must split each into "
                f"equal parts (a multiple of {before}); for {partitions}, rebuild it beside "
                f"the live view: eventkit rebuild {name} --partitions {partitions}"
            )
        leases.lock(conn, name)
        old = tracking.positions(conn, name)
        positions = {k: old.get(k % before, Position.ORIGIN) for k in range(partitions)}
        for k in range(before, partitions):
            if positions[k] != Position.ORIGIN:
                tracking.set(conn, name, positions[k], k)
        # Each old partition's fold covers events now in several partitions: the audit
        # starts again from the split.
        for k in range(before):
            tracking.restart_audit(conn, name, k)
        set_partitions(conn, schema, name, partitions)
        leases.revoke(conn, name)
    return Split(name, before, partitions, positions)

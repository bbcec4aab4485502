"""Partitions: which events of the log belong to partition k of P.

An event's partition is a hash of its key modulo P. The key is its stream (the default:
each stream's events stay in one partition, in order), its event type (order per type),
or a function of the notification. Stream and type keys are computed by PostgreSQL
(``hashtextextended``) in the follower's read, so a partition reads only its own events;
a key function runs in the worker, which then drops other partitions' events itself.

Splitting P into a multiple of P keeps every event's partition inside its old one
(h mod kP = j implies h mod P = j mod P), which is what makes an online split exact.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from eventkit.infrastructure.log import LoggedNotification

#: "stream", "type", or a function of the notification returning the key.
PartitionKey = Literal["stream", "type"] | Callable[[LoggedNotification], str]

MAX_PARTITIONS = 1024


@dataclass(frozen=True)
class Partition:
    """Partition ``index`` of ``count``, by ``key``."""

    key: PartitionKey = "stream"
    count: int = 1
    index: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_PARTITIONS:
            raise ValueError(
                f"a consumer has between 1 and {MAX_PARTITIONS} partitions, not {self.count}"
            )
        if not 0 <= self.index < self.count:
            raise ValueError(f"partition {self.index} is not one of 0..{self.count - 1}")
        if not callable(self.key) and self.key not in ("stream", "type"):
            raise ValueError(f"partition key must be 'stream', 'type' or a function: {self.key!r}")

    @property
    def whole(self) -> bool:
        """One partition: every event is in it."""
        return self.count == 1

    def predicate(self, alias: str) -> tuple[sql.Composable, list[Any]] | None:
        """A SQL condition on the log table ``alias`` selecting this partition's events,
        or None when every event is in it or the key is a Python function."""
        if self.whole or callable(self.key):
            return None
        column = sql.Identifier(alias, "originator_id" if self.key == "stream" else "topic")
        cast = sql.SQL("::text") if self.key == "stream" else sql.SQL("")
        return (
            sql.SQL("mod(hashtextextended({}{}, 0) & 9223372036854775807, %s) = %s").format(
                column, cast
            ),
            [self.count, self.index],
        )

    def contains(self, notification: LoggedNotification) -> bool:
        """Whether the event is in this partition, for a key function (SQL-filtered keys
        were filtered by the read already)."""
        if self.whole or not callable(self.key):
            return True
        return zlib.crc32(self.key(notification).encode()) % self.count == self.index

    def describe(self) -> str:
        key = self.key if isinstance(self.key, str) else getattr(self.key, "__name__", "function")
        return f"partition {self.index} of {self.count} by {key}"


def record_partitions(conn: psycopg.Connection[Any], schema: str, name: str, count: int) -> None:
    """Record ``count`` as ``name``'s number of partitions unless one is recorded already
    (the number every batch's fence checks)."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (consumer, partitions) VALUES (%s, %s) ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(schema, "partitioning")),
        (name, count),
    )


def recorded_partitions(conn: psycopg.Connection[Any], schema: str) -> dict[str, int]:
    """Every consumer's recorded number of partitions."""
    rows = conn.execute(
        sql.SQL("SELECT consumer, partitions FROM {}").format(
            sql.Identifier(schema, "partitioning")
        )
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def set_partitions(conn: psycopg.Connection[Any], schema: str, name: str, count: int) -> None:
    """Record ``count`` as ``name``'s number of partitions (the caller has locked and will
    revoke its leases in the same transaction)."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (consumer, partitions) VALUES (%s, %s) ON CONFLICT (consumer)"
            " DO UPDATE SET partitions = excluded.partitions, updated_at = clock_timestamp()"
        ).format(sql.Identifier(schema, "partitioning")),
        (name, count),
    )

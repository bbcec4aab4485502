"""The workload's summary: commands accepted and rejected, events stored, stock never oversold.

Every figure but the commands' tally is counted in the database, and the stock invariant
(on hand >= reserved >= 0) is checked in SQL at every version of every stock item.
"""

from __future__ import annotations

import dataclasses

import psycopg_pool
from psycopg import sql

from eventkit.domain.names import AGGREGATE_TYPES, EVENT_TYPES
from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.stock import StockItem
from eventkit.shop.demo.catalogue import CATALOGUE
from eventkit.shop.demo.workload import Tally


@dataclasses.dataclass(frozen=True)
class Counts:
    """What the event store holds, counted in the database."""

    events: int
    streams: int
    per_type: list[tuple[str, int]]


def count(pool: psycopg_pool.ConnectionPool, schema: str) -> Counts:
    """Count the stored events, their streams, and the events of each type."""
    table = sql.Identifier(schema, "stored_events")
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT originator_id) FROM {}").format(table)
        ).fetchone()
        per_type = conn.execute(
            sql.SQL("SELECT topic, count(*) FROM {} GROUP BY topic ORDER BY 2 DESC").format(table)
        ).fetchall()
    assert row is not None
    return Counts(events=row[0], streams=row[1], per_type=[(t, n) for t, n in per_type])


def print_commands(tally: Tally, writers: int, orders: int, wall: float) -> None:
    accepted, rejected = sum(tally.accepted.values()), sum(tally.rejected.values())
    print(
        f"workload: {writers} writers, {orders:,} orders, {accepted + rejected:,} "
        f"commands in {wall:.1f} s"
    )
    print(f"\n  {'command':<16}{'accepted':>10}{'rejected':>10}")
    for name in sorted(set(tally.accepted) | set(tally.rejected)):
        print(f"  {name:<16}{tally.accepted[name]:>10,}{tally.rejected[name]:>10,}")
    print(f"  {'total':<16}{accepted:>10,}{rejected:>10,}")


def print_rejections(tally: Tally, max_attempts: int) -> None:
    print("\nrejections by error, with examples:")
    for error, n in tally.errors.most_common():
        print(f"  {error} ({n:,})")
        for example in tally.examples[error]:
            shown = example if len(example) <= 200 else example[:197] + "..."
            print(f"    - {shown}")
    print(
        f"\nconcurrency: {tally.conflicts:,} saves conflicted with another writer; "
        f"{tally.conflicts - tally.gave_up:,} were retried on fresh aggregates, and "
        f"{tally.gave_up:,} command(s) gave up after {max_attempts} attempts"
    )


def print_events(counts: Counts, before: int, wall: float) -> None:
    print(
        f"\nevents: {counts.events:,} in {counts.streams:,} streams (counted in the database); "
        f"{(counts.events - before) / wall:,.0f} events/s appended during the workload"
    )
    for topic, n in counts.per_type:
        print(f"  {n:>8,}  {topic}")


#: Per stock item and version: units on hand and reserved, summed over the stream so far.
_STOCK_HISTORY = """
WITH deltas AS (
    SELECT originator_id, originator_version,
        CASE topic WHEN %(received)s THEN q WHEN %(committed)s THEN -q ELSE 0 END AS on_hand,
        CASE topic WHEN %(reserved)s THEN q WHEN %(released)s THEN -q
            WHEN %(committed)s THEN -q ELSE 0 END AS reserved
    FROM (
        SELECT originator_id, originator_version, topic,
            coalesce((state->>'quantity')::bigint, 0) AS q
        FROM {} WHERE topic LIKE %(stock_topics)s
    ) AS e
), running AS (
    SELECT sum(on_hand) OVER w AS on_hand, sum(reserved) OVER w AS reserved
    FROM deltas WINDOW w AS (PARTITION BY originator_id ORDER BY originator_version)
)
SELECT count(*) FILTER (WHERE NOT (on_hand >= reserved AND reserved >= 0)), count(*)
FROM running
"""


def check_stock(shop: Shop, pool: psycopg_pool.ConnectionPool, schema: str) -> bool:
    """Print whether a stock item was ever oversold; return True if none was.

    Checks the invariant at every version of every stock item, in SQL on the stored
    events, and the shop's current view of each item.
    """
    topics = {
        name: EVENT_TYPES.name(event_class)
        for name, event_class in [
            ("received", StockItem.Received),
            ("reserved", StockItem.Reserved),
            ("released", StockItem.Released),
            ("committed", StockItem.ReservationCommitted),
        ]
    }
    query = sql.SQL(_STOCK_HISTORY).format(sql.Identifier(schema, "stored_events_json"))
    with pool.connection() as conn:
        row = conn.execute(
            query, {**topics, "stock_topics": AGGREGATE_TYPES.name(StockItem) + ".%"}
        ).fetchone()
    assert row is not None
    violations, versions = row
    views = [shop.get_stock(sku) for sku, *_ in CATALOGUE]
    oversold = [v for v in views if not v.on_hand >= v.reserved >= 0]
    if violations or oversold:
        print(
            f"\nstock: OVERSOLD at {violations} version(s): "
            + ", ".join(f"{v.sku} (on hand {v.on_hand}, reserved {v.reserved})" for v in oversold)
        )
        return False
    print(
        f"\nstock: never oversold: on_hand >= reserved >= 0 at each of the {versions:,} "
        f"versions of the {len(views)} stock items (checked in SQL); now "
        f"{sum(v.on_hand for v in views):,} on hand, {sum(v.reserved for v in views):,} "
        "reserved for orders not yet shipped"
    )
    return True

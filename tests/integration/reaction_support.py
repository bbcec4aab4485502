"""Helpers for reaction tests: test reactions, a runtime in a thread, waiting for effects."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar
from uuid import UUID

import psycopg_pool
from psycopg import sql

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import OrderLineRequest, PlaceOrder, ReceiveStock
from eventkit.domain.shop.orders import Order
from eventkit.domain.shop.stock import StockItem
from eventkit.infrastructure.broker import BrokerOptions
from eventkit.infrastructure.settings import Settings
from eventkit.projections.follower import PollPolicy
from eventkit.projections.projection import Table, handles
from eventkit.projections.reaction import Reaction, ReactionContext
from eventkit.projections.reactor import ReactionRuntime, reaction_runtime

FAST_POLL = PollPolicy(min_interval_s=0.001, max_interval_s=0.02, lease_wait_s=0.05)
FAST_BROKER = BrokerOptions(
    poll_interval_s=0.05, heartbeat_interval_s=0.5, heartbeat_ttl_s=3.0, maintenance_interval_s=1.0
)


class Effects(Reaction):
    """Records each placed order in its table, through the ledger; fails on purpose for
    the orders in ``broken``."""

    name = "effects"
    start_from = "origin"  # events are written before the runtime starts
    max_attempts = 3
    min_backoff_ms = 10
    max_backoff_ms = 50
    broken: ClassVar[set[UUID]] = set()
    calls: ClassVar[Counter[UUID]] = Counter()
    lock: ClassVar[threading.Lock] = threading.Lock()
    tables = (
        Table(
            "effects",
            "CREATE TABLE {table} (message_id uuid NOT NULL, order_id uuid NOT NULL,"
            " attempt integer NOT NULL)",
        ),
    )

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        with self.lock:
            self.calls[context.message_id] += 1
        if event.originator_id in self.broken:
            raise RuntimeError(f"order {event.originator_id} is poison")
        context.execute(
            "INSERT INTO {effects} (message_id, order_id, attempt) VALUES (%s, %s, %s)",
            (context.message_id, event.originator_id, context.attempt),
        )


class Audit(Reaction):
    """A second reaction to the same event type."""

    name = "audit"
    start_from = "origin"  # events are written before the runtime starts
    tables = (Table("audit", "CREATE TABLE {table} (message_id uuid NOT NULL, order_id uuid)"),)

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        context.execute(
            "INSERT INTO {audit} (message_id, order_id) VALUES (%s, %s)",
            (context.message_id, event.originator_id),
        )


class Restock(Reaction):
    """Receives 5 units of every sku registered: a command caused by an event (set
    ``shop`` first)."""

    name = "restock"
    start_from = "origin"
    shop: ClassVar[Shop | None] = None

    @handles
    def registered(self, event: StockItem.Registered, context: ReactionContext) -> None:
        assert self.shop is not None
        self.shop.receive_stock(ReceiveStock(sku=event.sku, quantity=5))


def make_runtime(
    reactions: Sequence[Reaction],
    settings: Settings,
    *,
    broker_url: str | None = None,
    threads: int = 4,
    follow: bool = True,
    durable_commits: bool = False,
) -> ReactionRuntime:
    """A runtime with fast timings, on the PostgreSQL broker unless ``broker_url`` names
    another."""
    return reaction_runtime(
        reactions,
        dataclasses.replace(settings, broker_url=broker_url),
        worker_id="test",
        broker_options=FAST_BROKER,
        worker_threads=threads,
        batch_size=200,
        poll=FAST_POLL,
        follow=follow,
        durable_commits=durable_commits,
    )


def place(shop: Shop, n: int, tag: str = "c", sku: str = "SKU-001") -> list[UUID]:
    """Place ``n`` one-line orders; return their ids."""
    return [
        shop.place_order(
            PlaceOrder(customer_id=f"{tag}{i}", lines=(OrderLineRequest(sku=sku, quantity=1),))
        ).order_id
        for i in range(n)
    ]


@contextmanager
def running_reactions(runtime: ReactionRuntime) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=runtime.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the reaction runtime did not stop"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def count(pool: psycopg_pool.ConnectionPool, schema: str, table: str, where: str = "") -> int:
    """Rows of ``schema.table`` (0 while the table does not exist yet)."""
    with pool.connection() as conn:
        found = conn.execute(
            "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
            (schema, table),
        ).fetchone()
        if found is None or not found[0]:
            return 0
        query = sql.SQL("SELECT count(*) FROM {} ").format(sql.Identifier(schema, table))
        if where:
            query += sql.SQL(where)  # type: ignore[arg-type]
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])

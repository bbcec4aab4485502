"""Dead letters: a demo projection that fails on purpose for one order, then is fixed.

The demo's own projection, ``customer_ledger``, raises for the poison order as a bug would:
its first event is parked as a dead letter with the rest of its stream behind it, other
orders go on, and once the bug is fixed the operator retries the stream, in order.
"""

from __future__ import annotations

import time
from decimal import Decimal
from uuid import UUID

import psycopg_pool

from eventkit.domain.shop.application import OrderPlacement, Shop
from eventkit.domain.shop.commands import CapturePayment, OrderLineRequest, PlaceOrder
from eventkit.domain.shop.orders import Order
from eventkit.projections.follower import RetryPolicy
from eventkit.projections.projection import Context, Projection, Table, handles
from eventkit.projections.queries import Queries
from eventkit.shop.demo.cli import cli_env, eventkit

#: The demo's workers retry a failing event quickly, so the poison order is parked at once.
DEMO_RETRY = RetryPolicy(max_attempts=3, first_delay_s=0.05, max_delay_s=0.2)


class CustomerLedger(Projection):
    """Demo only: what each customer ordered and paid, one entry per order event.

    Its handlers raise for the orders in ``poison``, as a bug would: the demo shows the
    first such event parked as a dead letter with the rest of its stream behind it, other
    orders going on, and the stream retried in order once the bug is fixed.
    """

    name = "customer_ledger"
    tables = (
        Table(
            "customer_ledger",
            "CREATE TABLE {table} (order_id uuid, version bigint, customer_id text NOT NULL,"
            " kind text NOT NULL, amount numeric NOT NULL, PRIMARY KEY (order_id, version));"
            "CREATE INDEX ON {table} (customer_id)",
        ),
    )

    def __init__(self) -> None:
        self.poison: set[UUID] = set()

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        self._check(event)
        context.execute(
            "INSERT INTO {customer_ledger} (order_id, version, customer_id, kind, amount)"
            " VALUES (%s, %s, %s, 'placed', %s)",
            (event.originator_id, event.originator_version, event.customer_id, event.total),
        )

    @handles
    def paid(self, event: Order.Paid, context: Context) -> None:
        self._check(event)
        # Copies the placed entry: were a paid event applied before its order's placed
        # event (say, past a parked one), no row would match.
        row = context.execute(
            "INSERT INTO {customer_ledger} (order_id, version, customer_id, kind, amount)"
            " SELECT order_id, %s, customer_id, 'paid', amount FROM {customer_ledger}"
            " WHERE order_id = %s AND kind = 'placed' RETURNING order_id",
            (event.originator_version, event.originator_id),
        ).fetchone()
        if row is None:
            raise LookupError(f"order {event.originator_id} was paid but is not in the ledger")

    def _check(self, event: Order.Event) -> None:
        if event.originator_id in self.poison:
            raise RuntimeError(f"order {event.originator_id} is poison (a bug, on purpose)")


class CustomerLedgerQueries(Queries):
    """Reads of the demo's ledger."""

    projection = CustomerLedger

    def entries(self, order_id: UUID) -> list[tuple[int, str, Decimal]]:
        """An order's entries in stream order: (version, kind, amount)."""
        rows = self.fetch(
            "SELECT version, kind, amount FROM {customer_ledger} WHERE order_id = %s"
            " ORDER BY version",
            (order_id,),
        )
        return [(int(r[0]), str(r[1]), Decimal(r[2])) for r in rows]

    def order_count(self) -> int:
        rows = self.fetch("SELECT count(DISTINCT order_id) FROM {customer_ledger}")
        return int(rows[0][0])


def place_poison_order(shop: Shop) -> OrderPlacement:
    """An order, paid: two events of one stream for the demo's ledger to choke on."""
    placed = shop.place_order(
        PlaceOrder(
            customer_id="customer-13", lines=(OrderLineRequest(sku="TEA-BLACK", quantity=2),)
        )
    )
    shop.capture_payment(CapturePayment(payment_id=placed.payment_id))
    return placed


def retry_dead_letters(
    ledger: CustomerLedger,
    poison: UUID,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    url: str,
) -> bool:
    """Show the poison order's dead letters, fix the handler, retry; True if all applied."""
    queries = CustomerLedgerQueries(pool, schema)
    print(
        f"\ndead letters: {CustomerLedger.name} applied the events of "
        f"{queries.order_count():,} other orders; order {poison} failed {DEMO_RETRY.max_attempts} "
        "times and was parked, with its later event parked behind it:"
    )
    with cli_env(url, schema):
        eventkit("dlq", "list")
        ledger.poison.clear()
        print("  the bug is fixed (the poison set is cleared); the running worker retries:")
        started = time.perf_counter()
        code = eventkit("dlq", "retry", "--consumer", CustomerLedger.name, "--timeout", "10")
        wall = time.perf_counter() - started
        entries = queries.entries(poison)
        print(
            f"  in {wall:.1f} s; the order's ledger entries now, in stream order: "
            + ", ".join(f"v{version} {kind} {amount}" for version, kind, amount in entries)
        )
        eventkit("dlq", "list")
    return code == 0 and [kind for _, kind, _ in entries] == ["placed", "paid"]

"""Reactions: the payment process through a payment gateway that fails and then recovers.

The shop's reactions start at the head of the log, as if deployed now. The fake gateway
answers 503 to every charge, so each charge is retried with backoff and then parked; once
the gateway is back, the operator retries the parked messages and every order is charged
once (one idempotency key per payment), shipped or cancelled, and mailed.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from uuid import UUID

import psycopg_pool
from psycopg import sql

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import OrderLineRequest, PlaceOrder
from eventkit.domain.shop.errors import DomainError
from eventkit.infrastructure.broker import BrokerOptions
from eventkit.infrastructure.deadletters import DeadLetters
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.tracking import Tracking
from eventkit.projections.app import Runtime
from eventkit.projections.reactor import reaction_runtime
from eventkit.projections.shop import app
from eventkit.projections.shop.reactions import ChargePayments
from eventkit.shop.demo.catalogue import CATALOGUE
from eventkit.shop.demo.cli import cli_env, eventkit
from eventkit.shop.demo.projections import last_position
from eventkit.shop.gateway import FakeGateway

#: Demo orders placed while the reactions run; the gateway declines amounts over the limit.
REACTION_ORDERS = 24
GATEWAY_LIMIT = Decimal("60.00")


def run_reactions(
    shop: Shop, settings: Settings, pool: psycopg_pool.ConnectionPool, url: str
) -> bool:
    """The payment process on reactions, through a gateway that fails and then recovers."""
    schema = settings.schema
    print(
        "\nreactions: charge_payments (an HTTP payment gateway, the message id as idempotency "
        "key), ship_paid_orders, order_mails (written through the idempotency ledger); they "
        "start at the head of the log, as if deployed now"
    )
    head = last_position(pool, schema)
    names = [r.name for r in app.reactions]
    with pool.connection() as conn, conn.transaction():
        for name in names:
            Tracking(schema).set(conn, name, head)
    with FakeGateway(decline_over=GATEWAY_LIMIT) as gateway:
        gateway.failing = True
        reactions = Runtime(app, settings, {"PAYMENT_GATEWAY_URL": gateway.url})
        runtime = reaction_runtime(
            [reactions.construct(r) for r in app.reactions],
            settings,
            worker_id="demo",
            worker_threads=4,
            broker_options=BrokerOptions(poll_interval_s=0.05),
        )
        stop = threading.Event()
        runner = threading.Thread(target=runtime.run, args=(stop,), name="demo-reactions")
        runner.start()
        try:
            orders = _place_orders(shop)
            print(
                f"  {len(orders)} orders placed; the gateway answers 503 to every charge, so "
                f"each is tried {ChargePayments.max_attempts} times with backoff, then parked:"
            )
            parked = _wait(
                lambda: _open_letters(pool, schema, ChargePayments.name) >= len(orders), 60
            )
            print(f"  gateway calls so far: {gateway.failed_calls()} answered 503")
            with cli_env(url, schema):
                eventkit("status", *names)
                gateway.failing = False
                print("  the gateway is back; the operator retries the parked messages:")
                code = eventkit(
                    "dlq", "retry", "--consumer", ChargePayments.name, "--timeout", "60"
                )
                mailed = _wait(lambda: _mails(pool, schema) >= len(orders), 60)
                eventkit("status", *names)
        finally:
            stop.set()
            runner.join(timeout=60)
        statuses = Counter(shop.get_order(o).status.value for o in orders)
        keys = gateway.keys_per_payment()
        one_key_each = all(len(k) == 1 for k in keys.values()) and len(keys) == len(orders)
        print(
            f"  orders now: {', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}; "
            f"{_mails(pool, schema)} mails written, one per order; the gateway charged "
            f"{len(keys)} payments, "
            + ("each with one key" if one_key_each else "NOT one key each")
        )
    return (
        parked
        and code == 0
        and mailed
        and one_key_each
        and sum(statuses.values()) == len(orders)
        and set(statuses) <= {"shipped", "cancelled"}
    )


def _place_orders(shop: Shop) -> list[UUID]:
    rng = random.Random(7)
    orders = []
    skus = [sku for sku, *_ in CATALOGUE if not sku.startswith("LTD-")]
    for i in range(REACTION_ORDERS):
        try:
            placed = shop.place_order(
                PlaceOrder(
                    customer_id=f"reaction-{i}",
                    lines=(OrderLineRequest(sku=rng.choice(skus), quantity=rng.randint(1, 3)),),
                )
            )
        except DomainError:
            continue  # out of stock after the writers: not placed
        orders.append(placed.order_id)
    return orders


def _open_letters(pool: psycopg_pool.ConnectionPool, schema: str, name: str) -> int:
    with pool.connection() as conn:
        return len(DeadLetters(schema).select(conn, consumer=name, statuses=("parked",)))


def _mails(pool: psycopg_pool.ConnectionPool, schema: str) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "order_mails"))
        ).fetchone()
    return 0 if row is None else int(row[0])


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            print(f"  NOT done within {timeout:.0f} s")
            return False
        time.sleep(0.1)
    return True

"""eventkit.testing.ProjectionScenario: given events, then the view's rows, rolled back."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import psycopg
import pytest
from freezegun import freeze_time

from eventkit.domain.shop.orders import Currency, Order, OrderLine
from eventkit.domain.shop.stock import StockItem
from eventkit.infrastructure.settings import Settings
from eventkit.projections.projection import Context, Projection, Table, handles
from eventkit.projections.shop import OrderSummaries, OrderSummaryQueries, StockLevelQueries
from eventkit.projections.shop.order_summaries import OutOfOrderError
from eventkit.testing import HandlerFailedError, ProjectionScenario, Transaction, new_event

LINES = (OrderLine(sku="TEA-GREEN", quantity=2, unit_price=Decimal("6.90")),)


def placed(order_id: UUID, customer_id: str = "ada") -> object:
    return new_event(
        Order.Placed,
        order_id,
        customer_id=customer_id,
        lines=LINES,
        total=Decimal("13.80"),
        currency=Currency.EUR,
    )


class Poisoned(Projection):
    """Writes each placed order; raises for customer 'poison'; its table has a unique
    customer, so a second order of one customer fails when the batch is sent."""

    name = "poisoned"
    tables = (Table("poisoned", "CREATE TABLE {table} (customer text PRIMARY KEY)"),)

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        if event.customer_id == "poison":
            raise RuntimeError("customer poison")
        context.execute("INSERT INTO {poisoned} (customer) VALUES (%s)", (event.customer_id,))


def test_rows_after_the_given_events(eventkit_transaction: Transaction) -> None:
    a, b = uuid4(), uuid4()
    view = ProjectionScenario(OrderSummaries(), eventkit_transaction)

    view.given(placed(a), placed(b, "bo"), new_event(Order.Paid, a, payment_id=uuid4()))
    view.given(new_event(Order.Cancelled, b, reason="changed my mind"))

    assert view.rows(
        "order_summaries", columns=["customer_id", "status"], order_by="customer_id"
    ) == [
        {"customer_id": "ada", "status": "paid"},
        {"customer_id": "bo", "status": "cancelled"},
    ]
    assert view.query("SELECT count(*) FROM {order_summaries} WHERE version = 2") == [(2,)]
    summary = view.queries(OrderSummaryQueries).get(b)
    assert summary is not None
    assert summary.cancellation_reason == "changed my mind"


def test_a_batch_that_fails_names_the_event_and_applies_nothing(
    eventkit_transaction: Transaction,
) -> None:
    a, stray = uuid4(), uuid4()
    view = ProjectionScenario(OrderSummaries(), eventkit_transaction).given(placed(a))

    # The expect_rows check of the second event fails when the pipelined batch is sent;
    # the batch runs again statement by statement and names that event.
    with pytest.raises(HandlerFailedError) as raised:
        view.given(new_event(Order.Paid, a, payment_id=uuid4()), new_event(Order.Shipped, stray))

    error = raised.value
    assert isinstance(error.error, OutOfOrderError)
    assert str(error).startswith(
        f"projection 'order_summaries' failed on Order.Shipped(stream {stray}, version 1) "
        "(position 3/3): OutOfOrderError"
    )
    assert view.rows("order_summaries", columns=["status"]) == [{"status": "placed"}]


def test_a_statement_that_fails_when_the_batch_is_sent_names_its_event(
    eventkit_transaction: Transaction,
) -> None:
    view = ProjectionScenario(Poisoned(), eventkit_transaction)
    first, second = uuid4(), uuid4()

    with pytest.raises(HandlerFailedError, match=rf"Order.Placed\(stream {second}, version 1"):
        view.given(placed(first), placed(uuid4(), "bo"), placed(second))
    assert isinstance(raised_error(view, placed(uuid4(), "poison")), RuntimeError)
    assert view.rows("poisoned") == []


def raised_error(view: ProjectionScenario, *events: object) -> BaseException:
    with pytest.raises(HandlerFailedError) as raised:
        view.given(*events)  # type: ignore[arg-type]
    return raised.value.error


def test_the_view_is_gone_after_the_transaction(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        # A real view of the same projection, with a row: the scenario never sees it.
        conn.execute(f'CREATE TABLE "{schema}".order_summaries (order_id uuid)')
        conn.execute(f'INSERT INTO "{schema}".order_summaries VALUES (gen_random_uuid())')
    with Transaction.open(Settings(database_url=database_url, schema=schema)) as transaction:
        view = ProjectionScenario(OrderSummaries(), transaction)
        assert view.rows("order_summaries") == []
        view.given(placed(uuid4()))
        assert len(view.rows("order_summaries")) == 1

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (transaction.schema,)
        ).fetchone()
        real = conn.execute(f'SELECT count(*) FROM "{schema}".order_summaries').fetchone()
    assert (row, real) == ((0,), (1,))


def test_time_frozen_while_events_are_given_is_their_time(
    eventkit_transaction: Transaction,
) -> None:
    order_id = uuid4()
    view = ProjectionScenario(OrderSummaries(), eventkit_transaction)

    with freeze_time("2026-11-27 23:59:30"):
        view.given(placed(order_id))
    with freeze_time("2026-11-28 00:00:10"):
        view.given(new_event(Order.Paid, order_id, payment_id=uuid4()))

    assert view.rows("order_summaries", columns=["placed_at", "updated_at"]) == [
        {
            "placed_at": datetime(2026, 11, 27, 23, 59, 30, tzinfo=UTC),
            "updated_at": datetime(2026, 11, 28, 0, 0, 10, tzinfo=UTC),
        }
    ]


def test_events_the_projection_does_not_handle_are_not_given_to_it(
    eventkit_transaction: Transaction,
) -> None:
    view = ProjectionScenario(OrderSummaries(), eventkit_transaction)
    registered = StockItem.register("TEA-GREEN", "Green tea", Decimal("6.90"))

    view.given(registered, placed(uuid4()))

    assert [type(e).__name__ for e in view.skipped] == ["Registered"]
    assert len(view.rows("order_summaries")) == 1


def test_wrong_names_are_refused(eventkit_transaction: Transaction) -> None:
    view = ProjectionScenario(OrderSummaries(), eventkit_transaction)

    with pytest.raises(KeyError, match="has no table 'orders'; its tables: order_summaries"):
        view.rows("orders")
    with pytest.raises(TypeError, match="queries projection 'stock_levels', not 'order_summaries'"):
        view.queries(StockLevelQueries)

"""Given events, then the view's rows: a projection's tests, on a real PostgreSQL.

```python
def test_a_paid_order_is_listed_as_paid(eventkit_transaction):
    view = ProjectionScenario(OrderSummaries(), eventkit_transaction)
    view.given(placed, paid)
    assert view.rows("order_summaries", columns=["status"]) == [{"status": "paid"}]
```

Each :meth:`ProjectionScenario.given` is one batch of a worker: the events are encoded and
decoded as the log gives them, the handlers run through the follower's
:class:`~eventkit.projections.applier.ProjectionApplier` with a real
:class:`~eventkit.projections.projection.Context` whose statements are queued and sent
together (``expect_rows`` checked when they are sent), and a batch that fails runs again
statement by statement to name the event that failed, which :class:`HandlerFailedError`
then names. Everything happens in the test's transaction, rolled back afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self, TypeVar

import psycopg

from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.projection import Context, Projection
from eventkit.projections.queries import Queries
from eventkit.testing.consumers import ConsumerScenario, bound_queries
from eventkit.testing.database import Transaction
from eventkit.testing.events import Given, Logged, describe

Q = TypeVar("Q", bound=Queries)


class HandlerFailedError(Exception):
    """A consumer's handler (or a statement it queued) failed on one of the given events."""

    def __init__(self, consumer: str, logged: Logged, error: BaseException) -> None:
        n = logged.notification
        super().__init__(
            f"projection {consumer!r} failed on {describe(logged.event)} (position "
            f"{n.position}): {type(error).__name__}: {error}"
        )
        self.consumer = consumer
        self.event = logged.event
        self.notification = n
        #: What the handler raised.
        self.error = error


class _Failure(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


class ProjectionScenario(ConsumerScenario):
    """A projection whose view lives in the test's transaction."""

    kind = "projection"

    def __init__(self, projection: Projection, transaction: Transaction) -> None:
        super().__init__(projection, transaction)
        self.projection = projection
        self._statements: dict[str, bytes] = {}
        # What a follower applies the projection's events with: the same handler lookup.
        self._applier = ProjectionApplier(projection, self.schema, mapper=self._mapper)

    def given(self, *events: Given) -> Self:
        """Apply ``events`` as one batch (events, :func:`new_event` events, or aggregates
        whose pending events are taken); raise :class:`HandlerFailedError` naming the
        event that failed, with nothing of the batch applied."""
        batch = self._log(events)
        if not batch:
            return self
        if len(batch) > 1:
            # As a worker does: the batch's statements queued and sent in a pipeline; when
            # that fails, the batch runs again statement by statement to name the event.
            try:
                with self.conn.pipeline(), self.conn.transaction():
                    self._apply(batch, deferred=True)
                return self
            except psycopg.OperationalError:
                raise
            except (_Failure, psycopg.Error):
                pass
        try:
            with self.conn.transaction():
                self._apply(batch, deferred=False)
        except _Failure as failure:
            raise HandlerFailedError(self.name, batch[failure.index], failure.error) from (
                failure.error
            )
        return self

    def _apply(self, batch: Sequence[Logged], *, deferred: bool) -> None:
        context: Context | None = None
        for i, item in enumerate(batch):
            if context is None:
                context = Context(
                    self.conn,
                    self.tables,
                    item.notification,
                    deferred=deferred,
                    statements=self._statements,
                )
            else:
                context.notification = item.notification
            try:
                self._applier.apply(item.event, context)
            except psycopg.OperationalError:
                raise
            except Exception as e:
                raise _Failure(i, e) from e
        if context is not None:
            try:
                context.flush(results=False)
            except psycopg.OperationalError:
                raise
            except Exception as e:
                raise _Failure(len(batch) - 1, e) from e

    def queries(self, queries: type[Q]) -> Q:
        """The view's query class, reading in the test's transaction (``wait_for`` is for
        live workers: nothing here records a position)."""
        if queries.projection.name != self.name:
            raise TypeError(
                f"{queries.__qualname__} queries projection {queries.projection.name!r}, "
                f"not {self.name!r}"
            )
        return bound_queries(queries, self.transaction)

"""What applies a follower's events: the :class:`Applier` interface, and the projection's.

A :class:`~projections.follower.Follower` reads the log, holds the lease and records the
position; in each batch's transaction it hands every event to its applier. There are two:

- :class:`ProjectionApplier` decodes each event and runs the projection's handler on it,
  which writes the view through the :class:`~projections.projection.Context`;
- :class:`~projections.reactor.HandoverApplier`, a reaction's follower, writes one message
  per event through the broker's hand-over, undecoded (the message carries ids and the
  position; the reaction's actor loads the event).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

import psycopg
from eventsourcing.persistence import Mapper
from psycopg import sql

from eventkit.infrastructure.log import LoggedNotification
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.projection import (
    Consumer,
    Context,
    Projection,
    create_tables,
    table_identifiers,
)

if TYPE_CHECKING:  # imported at run time only with tracing on: it imports OpenTelemetry
    from eventkit.infrastructure.tracing import Tracing


class Applier(Protocol):
    """What applies a follower's events, in the batch's transaction."""

    @property
    def consumer(self) -> type[Consumer]:
        """The consumer class: its event types, partition key and ``start_from``."""

    @property
    def kind(self) -> str:
        """``projection`` or ``reaction``, for logs and metrics."""

    @property
    def tables(self) -> dict[str, sql.Identifier]:
        """The tables ``{name}`` placeholders in :meth:`Context.execute` stand for."""

    @property
    def sequenced(self) -> bool:
        """Whether order per stream matters: a stream's later events are parked behind
        its dead letter, and operators' retries of dead letters are the follower's to run
        (a reaction's messages run unordered; their dead letters are retried by queueing
        the message again)."""

    @property
    def observes_latency(self) -> bool:
        """Whether a committed batch ends its events' commit-to-processed time (a
        reaction's ends when its actor runs the message)."""

    def prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Get ready, in the transaction that starts work under a lease (create tables)."""

    def decode(self, notification: LoggedNotification) -> object:
        """What :meth:`apply` is given for ``notification``: the domain event, or the
        notification itself. Raises :class:`EventDecodingError` (the follower parks the
        event); runs in the follower's reader thread while it catches up."""

    def apply(self, event: object, context: Context) -> None:
        """Apply one event through ``context`` (``context.notification`` is its
        notification); raise to fail it."""


class ProjectionApplier:
    """Applies a projection's events to its view: decoded, each to its handler."""

    kind = "projection"
    sequenced = True
    observes_latency = True

    def __init__(
        self,
        projection: Projection,
        schema: str,
        *,
        mapper: Mapper[UUID] | None = None,
        table_suffix: str = "",
        tracing: bool = False,
    ) -> None:
        """``table_suffix`` names a copy of the view's tables (a rebuild's); ``tracing``:
        a span per event applied, child of the trace context stored with the event
        (:mod:`eventkit.infrastructure.tracing`, imported only then)."""
        self.projection = projection
        self.consumer: type[Consumer] = type(projection)
        self.schema = schema
        self.mapper = mapper or PydanticMapper()
        self.table_suffix = table_suffix
        self.tables = table_identifiers(schema, type(projection), table_suffix)
        self._handlers: dict[type[Any], Callable[[Any, Any, Context], None]] = {}
        self._tracing: Tracing | None = None
        if tracing:
            from eventkit.infrastructure.tracing import tracing as process_tracing

            self._tracing = process_tracing()

    def prepare(self, conn: psycopg.Connection[Any]) -> None:
        create_tables(conn, self.schema, self.consumer, self.table_suffix)

    def decode(self, notification: LoggedNotification) -> object:
        return self.mapper.to_domain_event(notification)

    def apply(self, event: object, context: Context) -> None:
        handler = self._handlers.get(type(event))
        if handler is None:
            handler = self._handlers[type(event)] = self.consumer.handler(type(event))
        if self._tracing is None:
            handler(self.projection, event, context)
            return
        name = self.consumer.name
        with self._tracing.consume(
            f"eventkit.projection {name}",
            kind="projection",
            consumer=name,
            notification=context.notification,
        ):
            handler(self.projection, event, context)

"""Tracing with OpenTelemetry: one trace follows a command through its append, the
projections that apply its events and the reactions they set off.

Off by default; ``EVENTKIT_TRACING=on`` (with ``eventkit[otel]``, the OpenTelemetry API,
installed) turns it on. Off, this module is never imported and nothing of OpenTelemetry is:
callers hold a :class:`Tracing` only when tracing is on, and test ``is None`` otherwise.

- An append is a span ``eventkit.append`` (kind PRODUCER), a child of whatever span is
  current where the save runs (a web request's, a reaction's). Its context is stored with
  the events, as the W3C ``traceparent`` (and ``tracestate``) in their ``headers``.
- A projection applying an event, and a reaction executing its message, open a span
  (kind CONSUMER) whose parent is that stored context: the trace of a command shows where
  its events went. The spans carry the event's correlation id, so traces can also be
  joined by it.

The SDK, its exporters and sampling are the application's to configure (the global tracer
provider), or :func:`use_tracer_provider` for eventkit alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from eventkit.infrastructure.errors import ConfigurationError

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ConfigurationError(
        "EVENTKIT_TRACING=on needs OpenTelemetry: pip install 'eventkit[otel]'"
    ) from e

#: The headers a stored trace context takes (W3C Trace Context).
TRACE_HEADERS = ("traceparent", "tracestate")


def use_tracer_provider(provider: Any) -> None:
    """Make eventkit's spans with ``provider`` instead of the global one (tests, or an
    application that keeps eventkit's traces apart); None goes back to the global one."""
    _tracing.provider = provider


class Tracing:
    """eventkit's spans, made with the tracer provider in force when each span starts."""

    def __init__(self) -> None:
        #: The tracer provider; None: OpenTelemetry's global one.
        self.provider: Any = None

    def _tracer(self) -> Any:
        return trace.get_tracer("eventkit", tracer_provider=self.provider)

    @contextlib.contextmanager
    def append(
        self, events: int, streams: list[str], correlation_id: str | None
    ) -> Iterator[dict[str, str]]:
        """A span around one append; yields the headers that carry its context, to store
        with the events."""
        attributes: dict[str, Any] = {
            "db.system": "postgresql",
            "eventkit.events": events,
            "eventkit.streams": streams[:10],
        }
        if correlation_id is not None:
            attributes["eventkit.correlation_id"] = correlation_id
        with self._tracer().start_as_current_span(
            "eventkit.append", kind=trace.SpanKind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            yield carrier

    @contextlib.contextmanager
    def consume(
        self,
        name: str,
        *,
        kind: str,
        consumer: str,
        notification: Any,
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[Any]:
        """A span for one event handled by a projection or a reaction (``kind``), child of
        the trace context stored with the event (when it has one)."""
        headers = getattr(notification, "headers", None) or {}
        carrier = {k: str(headers[k]) for k in TRACE_HEADERS if k in headers}
        parent = propagate.extract(carrier) if carrier else None
        values: dict[str, Any] = {
            "eventkit.kind": kind,
            "eventkit.consumer": consumer,
            "eventkit.notification_id": notification.id,
            "eventkit.stream": str(notification.originator_id),
            "eventkit.version": notification.originator_version,
            "eventkit.topic": notification.topic,
            **(attributes or {}),
        }
        correlation_id = getattr(notification, "correlation_id", None)
        if correlation_id is not None:
            values["eventkit.correlation_id"] = correlation_id
        token = None if parent is None else otel_context.attach(parent)
        try:
            with self._tracer().start_as_current_span(
                name, kind=trace.SpanKind.CONSUMER, attributes=values
            ) as span:
                yield span
        finally:
            if token is not None:
                otel_context.detach(token)


_tracing = Tracing()


def tracing() -> Tracing:
    """The process's :class:`Tracing`."""
    return _tracing

"""Tracing with OpenTelemetry on a real PostgreSQL, checked with the SDK's in-memory
exporter; and, with tracing off, nothing of OpenTelemetry imported."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import psycopg_pool
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg import sql

import eventkit
from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import RegisterStockItem
from eventkit.domain.shop.stock import StockItem
from eventkit.infrastructure.factory import mapper_for
from eventkit.infrastructure.partitions import Partition
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.tracing import use_tracer_provider
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.follower import Follower, FollowerOptions
from eventkit.projections.shop.stock_levels import StockLevels
from tests.integration.projection_support import (
    FAST_POLL,
    running,
    settings_for,
    wait_until_caught_up,
)
from tests.integration.reaction_support import Restock, make_runtime, running_reactions, wait_for


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    provider = TracerProvider()
    use_tracer_provider(provider)
    yield provider
    use_tracer_provider(None)
    provider.shutdown()


@pytest.fixture
def exporter(provider: TracerProvider) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def traced_env(app_env: dict[str, str]) -> dict[str, str]:
    return {**app_env, "EVENTKIT_TRACING": "on"}


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def stored_headers(pool: psycopg_pool.ConnectionPool, schema: str, stream: Any) -> Any:
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT headers FROM {} WHERE originator_id = %s").format(
                sql.Identifier(schema, "stored_events_json")
            ),
            (stream,),
        ).fetchone()
    assert row is not None
    return row[0]


def test_an_append_is_a_span_whose_context_is_stored_with_the_events(
    app_env: dict[str, str],
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    shop = Shop(env=traced_env(app_env))
    tracer = provider.get_tracer("tests")
    with (
        tracer.start_as_current_span("POST /stock") as request,
        eventkit.metadata(correlation_id="req-1", headers={"user": "ada"}),
    ):
        shop.register_stock_item(RegisterStockItem(sku="TEA", name="Tea", unit_price="3.20"))
    (append,) = by_name(exporter.get_finished_spans(), "eventkit.append")
    assert append.parent is not None
    assert append.parent.span_id == request.get_span_context().span_id
    assert append.kind is trace.SpanKind.PRODUCER
    assert append.attributes is not None
    assert append.attributes["eventkit.correlation_id"] == "req-1"
    assert append.attributes["eventkit.events"] == 1

    headers = stored_headers(pool, schema, StockItem.id_for("TEA"))
    assert headers["user"] == "ada"
    context = append.get_span_context()
    assert headers["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    )


def test_with_tracing_off_no_opentelemetry_module_is_imported(
    database_url: str, schema: str
) -> None:
    code = textwrap.dedent(
        """
        import sys
        from eventkit.domain.shop.application import Shop
        from eventkit.domain.shop.commands import ReceiveStock, RegisterStockItem
        from eventkit.infrastructure.factory import application_env
        shop = Shop(env=application_env())
        shop.register_stock_item(RegisterStockItem(sku="OFF", name="Off", unit_price="1"))
        loaded = [m for m in sys.modules if m.startswith("opentelemetry")]
        assert not loaded, loaded
        print("ok")
        """
    )
    env = {**os.environ, "DATABASE_URL": database_url, "EVENTKIT_SCHEMA": schema}
    env.pop("EVENTKIT_TRACING", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_tracing_on_without_opentelemetry_says_what_to_install(
    database_url: str, schema: str
) -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if eventkit[otel] were not installed
        from eventkit.domain.shop.application import Shop
        from eventkit.infrastructure.errors import ConfigurationError
        from eventkit.infrastructure.factory import application_env
        try:
            Shop(env={**application_env(), "EVENTKIT_TRACING": "on"})
        except ConfigurationError as e:
            print(e)
        """
    )
    env = {**os.environ, "DATABASE_URL": database_url, "EVENTKIT_SCHEMA": schema}
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'eventkit[otel]'" in done.stdout


def test_a_projection_applies_an_event_in_a_child_of_its_append(
    app_env: dict[str, str],
    database_url: str,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    exporter: InMemorySpanExporter,
) -> None:
    shop = Shop(env=traced_env(app_env))
    with eventkit.metadata(correlation_id="req-2"):
        shop.register_stock_item(RegisterStockItem(sku="TEA", name="Tea", unit_price="3.20"))
    options = FollowerOptions(
        url=database_url,
        recorder=PostgresEventRecorder(pool, schema),
        worker_id="test",
        poll=FAST_POLL,
        tracing=True,
    )
    applier = ProjectionApplier(
        StockLevels(), schema, mapper=mapper_for(pool, schema), tracing=options.tracing
    )
    with running(Follower(StockLevels.name, applier, Partition(), options)):
        wait_until_caught_up(pool, schema, StockLevels.name)
    spans = exporter.get_finished_spans()
    (append,) = by_name(spans, "eventkit.append")
    (applied,) = by_name(spans, f"eventkit.projection {StockLevels.name}")
    assert applied.kind is trace.SpanKind.CONSUMER
    assert applied.context is not None
    assert append.context is not None
    assert applied.context.trace_id == append.context.trace_id
    assert applied.parent is not None
    assert applied.parent.span_id == append.context.span_id
    assert applied.attributes is not None
    assert applied.attributes["eventkit.correlation_id"] == "req-2"
    assert applied.attributes["eventkit.topic"] == "StockItem.Registered"


def test_one_trace_follows_a_command_through_its_reaction_and_the_command_it_runs(
    app_env: dict[str, str],
    database_url: str,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    shop = Shop(env=traced_env(app_env))
    Restock.shop = shop
    with provider.get_tracer("tests").start_as_current_span("POST /stock") as request:
        shop.register_stock_item(RegisterStockItem(sku="TEA", name="Tea", unit_price="3.20"))
    settings = dataclasses.replace(settings_for(database_url, schema), tracing=True)
    runtime = make_runtime([Restock()], settings)
    try:
        with running_reactions(runtime):
            wait_for(
                lambda: len(by_name(exporter.get_finished_spans(), "eventkit.append")) == 2,
                "the reaction's command to append",
            )
    finally:
        Restock.shop = None
    spans = exporter.get_finished_spans()
    first, second = sorted(by_name(spans, "eventkit.append"), key=lambda s: s.start_time or 0)
    (reacted,) = by_name(spans, "eventkit.reaction restock")
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in (first, reacted, second) if s.context} == {trace_id}
    assert reacted.parent is not None
    assert first.context is not None
    assert reacted.parent.span_id == first.context.span_id
    assert second.parent is not None
    assert reacted.context is not None
    assert second.parent.span_id == reacted.context.span_id
    assert reacted.attributes is not None
    assert reacted.attributes["eventkit.attempt"] == 1

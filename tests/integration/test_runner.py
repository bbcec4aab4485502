"""eventkit.Workers: an application's workers inside a service's own process."""

from __future__ import annotations

import psycopg_pool
import pytest

import eventkit
from eventkit.domain.shop.application import Shop
from eventkit.infrastructure.errors import ConfigurationError
from tests.integration.projection_support import settings_for, stock_up, wait_until_caught_up
from tests.integration.reaction_support import count, place, wait_for
from tests.integration.test_starts_and_moves import Greetings, PlacedOrders


class EveryGreeting(Greetings):
    start_from = "origin"


def test_workers_run_an_apps_projections_and_reactions_in_this_process(
    app_env: dict[str, str], pool: psycopg_pool.ConnectionPool, database_url: str, schema: str
) -> None:
    shop = Shop(app_env)
    stock_up(shop)
    orders = place(shop, 4)
    app = eventkit.App("mine", projections=[PlacedOrders], reactions=[EveryGreeting])
    settings = settings_for(database_url, schema)
    with eventkit.Workers(app, settings=settings, worker_id="in-process", threads=2) as workers:
        assert [p.name for p in workers.projections] == ["placed_orders"]
        wait_until_caught_up(pool, schema, "placed_orders")
        wait_for(lambda: count(pool, schema, "greetings") == len(orders), "the greetings")
    assert count(pool, schema, "placed_orders") == len(orders)


def test_workers_refuse_to_run_nothing() -> None:
    app = eventkit.App("mine", projections=[PlacedOrders])
    settings = eventkit.Settings(database_url="postgresql://unused")
    with pytest.raises(ConfigurationError, match="nothing to run: application 'mine'"):
        eventkit.Workers(app, reactions_only=True, settings=settings)

"""eventkit's pytest plugin: registered, cheap when unused, and its fixtures' schemas."""

from __future__ import annotations

import subprocess
import sys
from uuid import uuid4

import psycopg
import pytest

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import RegisterStockItem
from eventkit.infrastructure.settings import Settings
from eventkit.testing import fresh_schema


def test_the_plugin_is_registered_by_its_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("eventkit")
    assert plugin is not None
    assert plugin.__name__ == "eventkit.testing.plugin"


def test_loading_the_plugin_imports_nothing_of_the_runtime() -> None:
    code = (
        "import sys, eventkit.testing.plugin; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'psycopg', 'psycopg_pool', 'eventsourcing', 'pydantic', 'dramatiq'}), "
        "sorted(m for m in sys.modules if m.startswith('eventkit.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[] ['eventkit.testing', 'eventkit.testing.plugin']"


def test_an_application_records_in_the_tests_own_schema(
    eventkit_application_env: dict[str, str], eventkit_settings: Settings
) -> None:
    assert eventkit_application_env["EVENTKIT_SCHEMA"] == eventkit_settings.schema
    shop = Shop(env=eventkit_application_env)
    shop.register_stock_item(RegisterStockItem(sku="TEA-1", name="Tea", unit_price=1))

    with psycopg.connect(eventkit_settings.database_url or "") as conn:
        row = conn.execute(
            f'SELECT count(*) FROM "{eventkit_settings.schema}".stored_events'
        ).fetchone()
    assert row == (1,)


def test_a_fresh_schema_is_migrated_and_dropped_afterwards(database_url: str) -> None:
    base = Settings(database_url=database_url, schema=f"unused_{uuid4().hex[:8]}")
    with fresh_schema(base) as settings, psycopg.connect(database_url) as conn:
        assert settings.schema != base.schema
        found = conn.execute(
            "SELECT to_regclass(format('%%I.stored_events', %s::text))", (settings.schema,)
        ).fetchone()
        assert found is not None
        assert found[0] is not None

    with psycopg.connect(database_url) as conn:
        gone = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (settings.schema,)
        ).fetchone()
    assert gone == (0,)

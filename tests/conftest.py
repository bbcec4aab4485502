"""Fixtures for tests that touch storage: a real PostgreSQL, one fresh schema per test.

The server is ``DATABASE_URL`` when set, else eventkit's embedded PostgreSQL (started on
first use and left running for the next run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from uuid import uuid4

import psycopg_pool
import pytest
from psycopg import sql

from eventkit.infrastructure.factory import close_pools, shared_pool
from eventkit.infrastructure.migrations import migrate
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings

# The second application (tests/second_app) has its own top-level `domain` package and its
# own tests: it runs in a process of its own (tests/integration/test_second_app.py), never
# in this one, where `domain` would not be its package.
collect_ignore = ["second_app"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-disruptive",
        action="store_true",
        help="also run tests that stop or restart a service this machine shares",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``disruptive`` (they stop or restart a shared service: RabbitMQ, the
    system PostgreSQL) run only when asked, as .ci/run does."""
    if config.getoption("--run-disruptive") or os.environ.get("EVENTKIT_DISRUPTIVE_TESTS") == "1":
        return
    skip = pytest.mark.skip(
        reason="stops or restarts a shared service: --run-disruptive or "
        "EVENTKIT_DISRUPTIVE_TESTS=1 to run it"
    )
    for item in items:
        if "disruptive" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def settings() -> Settings:
    base = Settings.from_env()
    return Settings(
        database_url=base.database_url,
        schema="eventkit_tests",
        home=base.home,
        pool_min_size=2,
        pool_max_size=40,
    )


@pytest.fixture(scope="session")
def database(settings: Settings) -> Iterator[tuple[psycopg_pool.ConnectionPool, str]]:
    """The session's pool and the URL it connects to."""
    pool, url = shared_pool(settings)
    yield pool, url
    close_pools()


@pytest.fixture(scope="session")
def database_url(database: tuple[psycopg_pool.ConnectionPool, str]) -> str:
    return database[1]


@pytest.fixture(scope="session")
def pool(database: tuple[psycopg_pool.ConnectionPool, str]) -> psycopg_pool.ConnectionPool:
    return database[0]


@pytest.fixture
def schema(pool: psycopg_pool.ConnectionPool) -> Iterator[str]:
    """A freshly migrated schema of its own for one test, dropped afterwards."""
    yield from _migrated_schema(pool)


@pytest.fixture
def other_schema(pool: psycopg_pool.ConnectionPool) -> Iterator[str]:
    """A second schema like ``schema``, for tests of two event stores on one server."""
    yield from _migrated_schema(pool)


def _migrated_schema(pool: psycopg_pool.ConnectionPool) -> Iterator[str]:
    name = f"test_{uuid4().hex[:16]}"
    with pool.connection() as conn:
        migrate(conn, name)
    yield name
    with pool.connection() as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def recorder(pool: psycopg_pool.ConnectionPool, schema: str) -> PostgresEventRecorder:
    return PostgresEventRecorder(pool, schema)


@pytest.fixture
def app_env(database_url: str, schema: str) -> dict[str, str]:
    """eventsourcing environment for an ``Application`` that records in the test's schema."""
    return {
        "PERSISTENCE_MODULE": "eventkit.infrastructure.factory",
        "DATABASE_URL": database_url,
        "EVENTKIT_SCHEMA": schema,
        "EVENTKIT_POOL_MAX_SIZE": "40",
    }

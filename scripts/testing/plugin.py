"""eventkit's pytest plugin: fixtures for tests of an application built on eventkit.

Registered through the ``pytest11`` entry point when eventkit is installed. Every fixture
is named ``eventkit_*``; none is set up unless a test asks for it, and this module imports
nothing of eventkit's runtime until one is.

- ``eventkit_database_url`` (session): ``DATABASE_URL``, or eventkit's embedded PostgreSQL.
- ``eventkit_transaction``: a :class:`eventkit.testing.Transaction` (a schema of its own,
  created inside it), rolled back after the test; for :class:`ProjectionScenario` and
  :class:`ReactionScenario`.
- ``eventkit_memory_env``: eventsourcing's in-memory recorder with eventkit's mapper, for
  ``Application(env=...)`` in unit tests.
- ``eventkit_settings``: :class:`eventkit.Settings` of a fresh migrated schema of the test's
  own, dropped afterwards: for real workers (``eventkit.Workers``) and query classes.
- ``eventkit_application_env``: the environment of an ``Application`` recording in that
  schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from eventkit.infrastructure.settings import Settings
    from eventkit.testing.database import Transaction


@pytest.fixture(scope="session")
def eventkit_database_url() -> str:
    """The test database: ``DATABASE_URL``, else eventkit's embedded server (started on
    first use)."""
    from eventkit.infrastructure.database import resolve_database_url
    from eventkit.infrastructure.settings import Settings

    return resolve_database_url(Settings.from_env())


@pytest.fixture
def eventkit_transaction(eventkit_database_url: str) -> Iterator[Transaction]:
    """A transaction with a schema of its own, rolled back after the test."""
    from eventkit.testing.database import Transaction

    with Transaction.connect(eventkit_database_url) as transaction:
        yield transaction


@pytest.fixture
def eventkit_memory_env() -> dict[str, str]:
    """eventsourcing's environment for an application on its in-memory recorder with
    eventkit's mapper."""
    from eventkit.testing import memory_env

    return memory_env()


@pytest.fixture
def eventkit_settings(eventkit_database_url: str) -> Iterator[Settings]:
    """Settings of a fresh migrated schema of the test's own, dropped after the test."""
    from eventkit.infrastructure.settings import Settings
    from eventkit.testing.database import fresh_schema

    base = Settings.from_env()
    with fresh_schema(Settings(database_url=eventkit_database_url, home=base.home)) as settings:
        yield settings


@pytest.fixture
def eventkit_application_env(eventkit_settings: Settings) -> dict[str, str]:
    """The environment of an ``Application`` that records in ``eventkit_settings``' schema."""
    from eventkit.infrastructure.factory import application_env

    return application_env(eventkit_settings)

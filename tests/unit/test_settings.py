from __future__ import annotations

import pytest

from infrastructure.errors import ConfigurationError
from infrastructure.settings import Settings, redact


def test_database_url_unset_means_embedded() -> None:
    assert Settings.from_env({}).database_url is None
    assert Settings.from_env({"DATABASE_URL": ""}).database_url is None


def test_settings_are_read_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u@h/db",
            "EVENTKIT_SCHEMA": "shop",
            "EVENTKIT_POOL_MAX_SIZE": "8",
        }
    )
    assert (s.database_url, s.schema, s.pool_max_size) == ("postgresql://u@h/db", "shop", 8)


@pytest.mark.parametrize("schema", ["Shop", "1shop", "shop; DROP TABLE x", ""])
def test_a_bad_schema_name_is_refused_with_its_value(schema: str) -> None:
    with pytest.raises(ConfigurationError, match="EVENTKIT_SCHEMA"):
        Settings.from_env({"EVENTKIT_SCHEMA": schema})


def test_a_bad_number_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="EVENTKIT_POOL_MAX_SIZE='many'"):
        Settings.from_env({"EVENTKIT_POOL_MAX_SIZE": "many"})


def test_pool_sizes_must_be_ordered() -> None:
    with pytest.raises(ConfigurationError, match="pool sizes"):
        Settings.from_env({"EVENTKIT_POOL_MIN_SIZE": "9", "EVENTKIT_POOL_MAX_SIZE": "4"})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/shop", "postgresql://app:***@db:5432/shop"),
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("postgresql://postgres@/postgres?host=/tmp", "postgresql://postgres@/postgres?host=/tmp"),
    ],
)
def test_redact_hides_passwords(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_prepared_statements_are_on_unless_turned_off() -> None:
    assert Settings.from_env({}).prepared_statements is True
    for off in ("off", "0", "false", "NO"):
        assert not Settings.from_env({"EVENTKIT_PREPARED_STATEMENTS": off}).prepared_statements
    with pytest.raises(ConfigurationError, match="EVENTKIT_PREPARED_STATEMENTS='sometimes'"):
        Settings.from_env({"EVENTKIT_PREPARED_STATEMENTS": "sometimes"})

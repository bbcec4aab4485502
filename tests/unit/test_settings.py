from __future__ import annotations

import re
from pathlib import Path

import pytest
from eventsourcing.utils import Environment

from eventkit.infrastructure.errors import ConfigurationError
from eventkit.infrastructure.factory import settings_of
from eventkit.infrastructure.settings import Settings, redact

#: A value other than the default for every setting.
NOT_DEFAULT = {
    "DATABASE_URL": "postgresql://u@h/db",
    "EVENTKIT_SCHEMA": "shop",
    "EVENTKIT_HOME": "/srv/eventkit",
    "EVENTKIT_POOL_MIN_SIZE": "3",
    "EVENTKIT_POOL_MAX_SIZE": "9",
    "EVENTKIT_NOTIFY": "1",
    "BROKER_URL": "amqp://guest:guest@mq:5672/",
    "EVENTKIT_PREPARED_STATEMENTS": "off",
    "EVENTKIT_SUBJECT_KEY_TTL": "0.5",
    "EVENTKIT_TRACING": "on",
    "EVENTKIT_MIGRATE": "off",
    "EVENTKIT_GROUP_COMMIT": "off",
    "EVENTKIT_WRITE_TIMEOUT": "2.5",
    "EVENTKIT_CONNECT_TIMEOUT": "3.5",
    "EVENTKIT_READ_URL": "postgresql://u@standby/db",
}


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


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_write_timeout_must_be_a_positive_number_of_seconds(value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"EVENTKIT_WRITE_TIMEOUT={value!r}"):
        Settings.from_env({"EVENTKIT_WRITE_TIMEOUT": value})
    assert Settings.from_env({"EVENTKIT_WRITE_TIMEOUT": "0.5"}).write_timeout_s == 0.5


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


def test_every_setting_is_documented_and_read() -> None:
    table = Path(__file__).parents[2].joinpath("docs", "operations.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)`(?:, `([A-Z_]+)`)?", table, re.MULTILINE))
    names = {n for pair in documented for n in pair if n}
    assert names == set(Settings.ENV_NAMES) == set(NOT_DEFAULT)
    defaults = Settings.from_env({})
    for name, value in NOT_DEFAULT.items():
        assert Settings.from_env({name: value}) != defaults, f"{name} is not read"


def test_an_application_env_carries_every_setting() -> None:
    """An Application's ``env`` (``PERSISTENCE_MODULE=infrastructure.factory``) sets what
    the process environment would: EVENTKIT_PREPARED_STATEMENTS=off used to be dropped, so
    writers behind a transaction pooler still prepared statements."""
    from_app = settings_of(Environment("Shop", NOT_DEFAULT))
    assert from_app == Settings.from_env(NOT_DEFAULT)
    assert from_app.prepared_statements is False
    assert from_app.broker_url == NOT_DEFAULT["BROKER_URL"]


def test_the_embedded_servers_home_is_the_projects_folder_never_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventkit.infrastructure.settings import default_home

    service = tmp_path / "service"
    (service / "src" / "deep").mkdir(parents=True)
    (service / "pyproject.toml").write_text("[project]\nname = 'service'\n")
    assert default_home(service / "src" / "deep") == service / ".eventkit"
    assert default_home(tmp_path) == tmp_path / ".eventkit"
    monkeypatch.chdir(service / "src")
    assert Settings.from_env({}).home == service / ".eventkit"
    assert Settings.from_env({"EVENTKIT_HOME": str(tmp_path / "x")}).home == tmp_path / "x"


def test_the_read_urls_password_is_redacted_wherever_it_appears() -> None:
    """EVENTKIT_READ_URL holds a password as DATABASE_URL does: it never reaches an output,
    in the URL or alone (an error that quotes it without ``password=``)."""
    env = {"EVENTKIT_READ_URL": "postgresql://reader:r3plica-pw@standby:5432/shop"}
    assert redact(env["EVENTKIT_READ_URL"], env) == "postgresql://reader:***@standby:5432/shop"
    assert redact("authentication failed: r3plica-pw", env) == "authentication failed: ***"


@pytest.mark.parametrize("command", ["workers", "rebuild"])
def test_read_url_flag_is_read_over_the_environment(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--read-url`` wins over ``EVENTKIT_READ_URL``; without it the environment's holds."""
    from eventkit.cli import build_parser
    from eventkit.cli.common import settings_of as cli_settings

    monkeypatch.setenv("EVENTKIT_READ_URL", "postgresql://u@from-env/db")
    names = ["order_summaries"] if command == "rebuild" else []
    parser = build_parser([command])
    flagged = parser.parse_args([command, *names, "--read-url", "postgresql://u@flag/db"])
    assert cli_settings(flagged).read_url == "postgresql://u@flag/db"
    assert cli_settings(parser.parse_args([command, *names])).read_url == (
        "postgresql://u@from-env/db"
    )

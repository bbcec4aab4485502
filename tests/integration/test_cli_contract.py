"""The command line's contract for scripts (issue 14, points 8 and 9; issue 17, points 4, 5
and 7), through the real ``eventkit`` command.

Results go to standard output; errors to standard error, in one line with the cause (for a
connection, PostgreSQL's own reason), never a traceback; exit codes 0 ok, 1 error, 2 usage,
3 unhealthy (docs/operations.md, "The command line").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventkit.cli import main

MAX_BIGINT = 2**63 - 1  # PostgreSQL bigint: the largest part of a log position

ROOT = Path(__file__).resolve().parents[2]


def eventkit(
    *args: str, stdin: int | None = subprocess.DEVNULL, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``eventkit`` in a process of its own, with no terminal, as a script would."""
    return subprocess.run(
        [sys.executable, "-m", "eventkit.cli", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, database_url: str, schema: str) -> str:
    """The process's environment pointed at the test's server and schema."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    return schema


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "args",
    [
        ["status", "nosuch"],
        ["partitions", "nosuch"],
        ["dlq", "list", "--projection", "nosuch"],
        ["dlq", "retry", "--consumer", "nosuch"],
        ["reset", "nosuch", "--to-head"],
        ["audit", "nosuch"],
    ],
)
def test_an_unknown_name_is_one_line_on_stderr_and_exit_1(
    cli: str, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = run(capsys, *args)
    assert (code, out) == (1, "")
    assert "'nosuch'" in assert_one_line_error(err)


def test_discarding_a_dead_letter_that_does_not_exist_is_an_error(
    cli: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "dlq", "discard", "99", "--yes")
    assert (code, out) == (1, "")
    assert assert_one_line_error(err) == f"eventkit: error: no dead letter #99 in schema {cli}"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["workers", "--batch-size", "0"], "--batch-size"),
        (["workers", "--batch-size", "-1"], "--batch-size"),
        (["workers", "--threads", "0"], "--threads"),
        (["workers", "--max-attempts", "0"], "--max-attempts"),
        (["workers", "--lease-ttl", "0"], "--lease-ttl"),
        (["workers", "--heartbeat", "-1"], "--heartbeat"),
        (["workers", "--heartbeat-ttl", "nan"], "--heartbeat-ttl"),
        (["workers", "--metrics-port", "70000"], "--metrics-port"),
        (["workers", "--metrics-port", "0"], "--metrics-port"),
        (["workers", "--stall-after", "0"], "--stall-after"),
        (["exporter", "--port", "70000"], "--port"),
        (["exporter", "--interval", "-5"], "--interval"),
        (["rebuild", "order_summaries", "--batch-size", "-5"], "--batch-size"),
        (["rebuild", "order_summaries", "--batch-size", "0"], "--batch-size"),
        (["rebuild", "order_summaries", "--partitions", "0"], "--partitions"),
        (["partitions", "order_summaries", "--set", "0"], "--set"),
        (["reset", "order_summaries", "--to-position", f"{MAX_BIGINT + 1}/1"], "--to-position"),
        (["reset", "order_summaries", "--to-position", "1/-1"], "--to-position"),
        (["reactions", "replay", "charge_payments", "--from", f"1/{MAX_BIGINT + 1}"], "--from"),
        (["status", "--watch", "0"], "--watch"),
        (["status", "--check", "--max-lag", "-1"], "--max-lag"),
        (["dlq", "retry", "1", "--timeout", "0"], "--timeout"),
        (["dlq", "show", "0"], "ID"),
    ],
)
def test_numbers_out_of_range_are_refused_at_parse_time(
    cli: str, capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    code, out, err = run(capsys, *args)
    assert (code, out) == (2, "")
    assert named in assert_one_line_error(err)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EVENTKIT_SCHEMA", "information_schema"),
        ("EVENTKIT_SCHEMA", "pg_catalog"),
        ("EVENTKIT_SCHEMA", "pg_toast"),
        ("EVENTKIT_SCHEMA", "Robert'); DROP TABLE x; --"),
        ("EVENTKIT_NOTIFY", "maybe"),
        ("EVENTKIT_CONNECT_TIMEOUT", "0"),
        ("EVENTKIT_POOL_MIN_SIZE", "0"),
        ("EVENTKIT_POOL_MAX_SIZE", "many"),
    ],
)
def test_settings_are_checked_before_anything_runs(
    cli: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
) -> None:
    monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "status")
    assert (code, out) == (2, "")
    assert name in assert_one_line_error(err)


def test_the_schema_flag_refuses_a_system_schema(
    cli: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "db", "current", "--schema", "information_schema")
    assert code == 2
    assert "system schemas" in assert_one_line_error(err)


def test_global_flags_stand_before_or_after_the_command(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--database-url`` and ``--schema`` override the environment, anywhere on the line."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nowhere")
    monkeypatch.setenv("EVENTKIT_SCHEMA", "not_this_one")
    before = run(capsys, "--database-url", database_url, "--schema", schema, "status", "--json")
    after = run(capsys, "status", "--json", "--schema", schema, "--database-url", database_url)
    for code, out, _ in (before, after):
        assert code == 0
        assert {p["consumer"] for p in json.loads(out)["projections"]} >= {"order_summaries"}
    assert run(capsys, "workers", "--log-format", "json", "--help")[0] == 0
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("eventkit ")


def test_every_listing_prints_json(
    cli: str, capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    for args in (
        ["status", "--json"],
        ["dlq", "list", "--json"],
        ["dlq", "list", "--all", "--json", "--consumer", "order_summaries"],
        ["partitions", "order_summaries", "--json"],
        ["db", "status", "--json"],
        ["db", "history", "--json"],
    ):
        code, out, _ = run(capsys, *args)
        assert code == 0, args
        json.loads(out)


def test_status_check_exits_3_while_a_consumer_is_unhealthy_and_0_once_it_runs(
    cli: str, capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    from eventkit.infrastructure.settings import Settings
    from eventkit.loading import load_app
    from eventkit.runner import Workers

    code, out, err = run(capsys, "status", "--check", "order_summaries")
    assert code == 3
    assert "order_summaries" in out
    assert assert_one_line_error(err).startswith("eventkit: unhealthy: order_summaries is stopped")
    settings = Settings(database_url=database_url, schema=cli)
    with Workers(load_app(None), ["order_summaries"], settings=settings, heartbeat_s=0.2):
        deadline = time.monotonic() + 60
        while run(capsys, "status", "--check", "order_summaries")[0] != 0:
            assert time.monotonic() < deadline, "status --check never said healthy"
            time.sleep(0.1)


def test_status_check_names_lag_and_dead_letters() -> None:
    from eventkit.cli.status import unhealthy
    from eventkit.projections.status import ReactionStatus

    def reaction(state: str, lag_s: float, dead: int) -> ReactionStatus:
        return ReactionStatus("r", state, None, "0/0", None, 0, lag_s, 0, 0, 0, 0, dead)

    assert unhealthy([], [reaction("running", 1.0, 0)], 30.0) == []
    assert unhealthy([], [reaction("running", 31.0, 0)], 30.0) == [
        "r lags 31.0 s (more than --max-lag 30)"
    ]
    assert unhealthy([], [reaction("running", 0.0, 2)], 30.0) == [
        "r has 2 open dead letter(s) (eventkit dlq list)"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "discard", "--consumer", "order_summaries"],
        ["reactions", "replay", "charge_payments", "--from", "0"],
    ],
)
def test_a_prompt_with_no_terminal_asks_for_yes(cli: str, args: list[str]) -> None:
    result = eventkit(*args)
    assert result.returncode == 2
    assert "add --yes" in assert_one_line_error(result.stderr)


def test_a_reader_that_goes_away_ends_the_output_quietly(cli: str) -> None:
    """``eventkit status --json | head``: the pipe closes before eventkit writes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventkit.cli", "status", "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before eventkit has even started
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert stderr == b""


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_metrics_port_in_use_is_a_one_line_error(cli: str, busy_port: int) -> None:
    result = eventkit("workers", "--projections-only", "--metrics-port", str(busy_port))
    assert result.returncode == 1
    assert f"cannot serve metrics on port {busy_port}" in assert_one_line_error(
        "\n".join(line for line in result.stderr.splitlines() if " INFO " not in line)
    )


def test_the_gateway_module_answers_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventkit.shop.gateway", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m eventkit.shop.gateway")


def test_a_missing_database_is_named_at_once(database_url: str) -> None:
    """PostgreSQL's own reason, without waiting out the connect timeout (60 s here: the
    process's own bound of 120 s would fail the test long before two such waits)."""
    missing = make_conninfo(database_url, dbname="eventkit_no_such_database")
    result = eventkit("status", DATABASE_URL=missing, EVENTKIT_CONNECT_TIMEOUT="60")
    assert result.returncode == 1
    line = assert_one_line_error(result.stderr)
    assert 'database "eventkit_no_such_database" does not exist' in line
    assert "within" not in line  # it did not wait for the timeout


def test_connection_refused_is_named_after_the_connect_timeout() -> None:
    url = f"postgresql://eventkit@127.0.0.1:{free_port()}/eventkit"
    result = eventkit("status", DATABASE_URL=url, EVENTKIT_CONNECT_TIMEOUT="1")
    assert result.returncode == 1
    line = assert_one_line_error(result.stderr)
    assert "within 1 s (EVENTKIT_CONNECT_TIMEOUT)" in line
    assert "Connection refused" in line


PASSWORD = "Kn0wn-Secret-Pw"


def test_no_output_prints_a_password(
    database_url: str,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every DSN form carries a known password (the server's trust authentication lets
    it in anyway); errors, status, JSON, db url and debug and JSON log lines never print
    it (issue 17, point 4)."""
    keyword = make_conninfo(database_url, password=PASSWORD)
    query = database_url + ("&" if "?" in database_url else "?") + f"password={PASSWORD}"
    params = conninfo_to_dict(database_url)
    host = str(params.get("host") or "")
    url = (
        f"postgresql://{params.get('user', '')}:{PASSWORD}@{host}:{params.get('port', 5432)}"
        f"/{params.get('dbname', '')}"
    )
    refused = f"postgresql://eventkit@127.0.0.1:{free_port()}/eventkit?password={PASSWORD}"
    outputs = []
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    monkeypatch.setenv("EVENTKIT_CONNECT_TIMEOUT", "1")
    for dsn in [keyword, query, *([url] if host and not host.startswith("/") else [])]:
        monkeypatch.setenv("DATABASE_URL", dsn)
        for args in (
            ["status"],
            ["status", "--json"],
            ["dlq", "list", "--json"],
            ["db", "url"],
            ["db", "status"],
            ["db", "status", "--json"],
        ):
            code, out, err = run(capsys, *args)
            assert code == 0, (args, err)
            outputs.append(out + err)
    for dsn in (
        refused,
        make_conninfo(keyword, host="127.0.0.1", port=str(free_port())),
        make_conninfo(keyword, dbname="eventkit_no_such_database"),
    ):
        monkeypatch.setenv("DATABASE_URL", dsn)
        code, out, err = run(capsys, "status")
        assert code == 1
        outputs.append(out + err)
    # Log lines, text and JSON, at DEBUG, with the password in PGPASSWORD as well.
    for args in (["-v", "status"], ["-v", "--log-format", "json", "status", "nosuch"]):
        result = eventkit(*args, DATABASE_URL=keyword, PGPASSWORD=PASSWORD)
        outputs.append(result.stdout + result.stderr)
    assert not [o for o in outputs if PASSWORD in o]
    monkeypatch.setenv("DATABASE_URL", keyword)
    assert PASSWORD in run(capsys, "db", "url", "--show-password")[1]  # when asked for


def test_two_sigterms_back_to_back_stop_the_workers_cleanly(cli: str) -> None:
    """A second SIGTERM during shutdown never hangs the worker (issue 17, point 7); a worker
    id with braces runs like any other (issue 14, point 8)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventkit.cli", "workers", "--id", "w{0}x", "--heartbeat", "0.2"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    leased = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "took the lease" in line:
                leased.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert leased.wait(60), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        proc.stderr.close()
    log = "".join(lines)
    assert "worker w{0}x stopped" in log
    assert "Traceback" not in log


def test_an_unreachable_read_url_is_named_without_its_password(
    database_url: str, schema: str
) -> None:
    """`eventkit workers --read-url` whose server refuses: one line that says it is the
    read URL, with PostgreSQL's reason and the password redacted."""
    read_url = f"postgresql://eventkit:{PASSWORD}@127.0.0.1:{free_port()}/eventkit"
    result = eventkit(
        "workers",
        "order_summaries",  # a projection: the shop's reactions warn of their gateway
        "--read-url",
        read_url,
        DATABASE_URL=database_url,
        EVENTKIT_SCHEMA=schema,
        EVENTKIT_CONNECT_TIMEOUT="1",
    )
    assert result.returncode == 1
    line = assert_one_line_error(result.stderr)
    assert "EVENTKIT_READ_URL, where followers read the log" in line
    assert "Connection refused" in line
    assert PASSWORD not in result.stderr + result.stdout

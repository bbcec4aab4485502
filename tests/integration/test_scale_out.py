"""Scale-out with real worker processes: partitions shared by a group, kill -9 and
takeover, a member joining, a paused member fenced, and a split under load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg_pool
import pytest
from psycopg import sql

from eventkit.cli import main as eventkit
from eventkit.domain.shop.application import Shop
from eventkit.infrastructure.partitions import record_partitions
from eventkit.projections.partitioning import split
from eventkit.projections.shop import OrderSummaries
from tests.integration.projection_support import settings_for, stock_up, workload
from tests.integration.scale_support import (
    ROOT,
    Audit,
    caught_up,
    check_view,
    leases,
    owners,
    start,
    wait_for,
)
from tests.integration.test_projections import replay_equals_live


@pytest.fixture
def shop(app_env: dict[str, str]) -> Shop:
    shop = Shop(env=app_env)
    stock_up(shop)
    return shop


class Writers:
    """Orders placed, paid and shipped continuously from a thread, until stopped."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.stop = threading.Event()
        self.commands = 0
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        seed = 0
        while not self.stop.is_set():
            self.commands += workload(self.shop, 5, seed=seed, stop=self.stop)
            seed += 1

    def __enter__(self) -> Writers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt()

    def halt(self) -> None:
        self.stop.set()
        self.thread.join()


@pytest.fixture
def workers(
    database_url: str, schema: str, tmp_path: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Worker processes by id; any left running are stopped (SIGCONT first, then SIGTERM)."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.terminate()
    for p in procs.values():
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
    for log in sorted(tmp_path.glob("*.log")):
        print(f"--- {log.name}\n{log.read_text()[-4000:]}")


def launch(
    procs: dict[str, subprocess.Popen[bytes]],
    worker_id: str,
    database_url: str,
    schema: str,
    tmp_path: Path,
    **options: float,
) -> None:
    procs[worker_id] = start(
        worker_id, database_url, schema, log=tmp_path / f"{worker_id}.log", **options
    )


def fair(counts: dict[str, int], members: set[str], partitions: int) -> bool:
    """Every partition held, by exactly ``members``, each holding its fair share."""
    share = partitions // len(members)
    return (
        set(counts) == members
        and sum(counts.values()) == partitions
        and all(share <= c <= share + 1 for c in counts.values())
    )


def stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    for name, p in procs.items():
        code = p.wait(30)
        assert code in (0, -signal.SIGKILL), f"worker {name} exited with {code}"


def test_three_workers_share_8_partitions_survive_kill_9_and_rebalance_for_a_fourth(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    workers: dict[str, subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    with Writers(shop) as writers:
        for w in ("w1", "w2", "w3"):
            launch(workers, w, database_url, schema, tmp_path)
        wait_for(
            "8 partitions fairly shared by 3",
            lambda: fair(owners(pool, schema), {"w1", "w2", "w3"}, 8),
        )
        time.sleep(1.0)
        doomed = {k for k, (owner, _, _) in leases(pool, schema).items() if owner == "w2"}
        killed_at = time.monotonic()
        workers["w2"].kill()
        took = wait_for(
            "w2's partitions taken over",
            lambda: fair(owners(pool, schema), {"w1", "w3"}, 8),
            timeout=15,
        )
        print(f"takeover of partitions {sorted(doomed)} after kill -9: {took:.2f} s")
        assert time.monotonic() - killed_at < 10
        time.sleep(1.0)
        launch(workers, "w4", database_url, schema, tmp_path)
        wait_for(
            "rebalanced over w1, w3, w4", lambda: fair(owners(pool, schema), {"w1", "w3", "w4"}, 8)
        )
        time.sleep(1.0)
        # A graceful stop hands the partitions over at once: well before a lease (3 s)
        # could expire.
        signalled = time.monotonic()
        workers["w1"].terminate()
        wait_for(
            "w1's partitions handed over",
            lambda: fair(owners(pool, schema), {"w3", "w4"}, 8),
            timeout=10,
        )
        handed = time.monotonic() - signalled
        print(f"handover after SIGTERM: {handed:.2f} s")
        assert workers["w1"].wait(20) == 0
        assert handed < 2.0
        time.sleep(1.0)
    assert writers.commands > 0
    wait_for("all partitions caught up", lambda: caught_up(pool, schema))
    stop_all(workers)
    rows = check_view(pool, schema)
    assert rows > 100
    with pool.connection() as conn:
        applied_by = dict(
            conn.execute(
                sql.SQL("SELECT owner, count(*) FROM {} GROUP BY owner").format(
                    sql.Identifier(schema, "audit")
                )
            ).fetchall()
        )
    assert {"w1", "w3", "w4"} <= set(applied_by), applied_by


def test_a_second_process_with_the_same_worker_id_waits_then_takes_over(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    workers: dict[str, subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """Leases are owned by worker id: two live processes under one --id would both work on
    its partitions. The second runs nothing, says why, and takes over when the first stops."""

    def member_pid() -> int | None:
        with pool.connection() as conn:
            row = conn.execute(
                sql.SQL("SELECT pid FROM {} WHERE worker_id = 'dup'").format(
                    sql.Identifier(schema, "worker_members")
                )
            ).fetchone()
        return None if row is None else int(row[0])

    second_log = tmp_path / "dup-second.log"
    workload(shop, 10, seed=1)
    first = workers["dup-first"] = start(
        "dup", database_url, schema, log=tmp_path / "dup-first.log"
    )
    wait_for("the first to hold every partition", lambda: owners(pool, schema) == {"dup": 8})
    second = workers["dup-second"] = start("dup", database_url, schema, log=second_log)
    wait_for("the second to say why it waits", lambda: "is in use by" in second_log.read_text())
    assert f"worker id 'dup' is in use by pid {first.pid}" in second_log.read_text()
    workload(shop, 10, seed=2)
    time.sleep(1.0)
    assert member_pid() == first.pid
    first.terminate()
    assert first.wait(20) == 0
    wait_for("the second to join", lambda: member_pid() == second.pid)
    wait_for("the second to hold every partition", lambda: owners(pool, schema) == {"dup": 8})
    assert "joined the group" in second_log.read_text()
    workload(shop, 10, seed=3)
    wait_for("all partitions caught up", lambda: caught_up(pool, schema))
    stop_all(workers)
    assert check_view(pool, schema) > 10


def test_a_paused_worker_commits_nothing_for_the_partitions_it_lost(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    workers: dict[str, subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    for w in ("w1", "w2"):
        launch(workers, w, database_url, schema, tmp_path)
    with Writers(shop):
        wait_for("8 partitions shared by 2", lambda: fair(owners(pool, schema), {"w1", "w2"}, 8))
        time.sleep(1.0)
    wait_for("caught up", lambda: caught_up(pool, schema))
    before = leases(pool, schema)
    lost = {k: g for k, (owner, g, _) in before.items() if owner == "w1"}
    os.kill(workers["w1"].pid, signal.SIGSTOP)
    # Past its lease (3 s): w2 takes w1's partitions over.
    wait_for("w2 owns every partition", lambda: owners(pool, schema) == {"w2": 8}, timeout=15)
    taken = leases(pool, schema)
    # w2 stops too, and events arrive that only the paused w1 could pick up on waking.
    os.kill(workers["w2"].pid, signal.SIGSTOP)
    workload(shop, 20, seed=99)
    os.kill(workers["w1"].pid, signal.SIGCONT)
    time.sleep(2.0)  # w1 wakes up with its old leases in memory and these events to read
    os.kill(workers["w2"].pid, signal.SIGCONT)
    with Writers(shop):
        time.sleep(2.0)
    wait_for("caught up after both resumed", lambda: caught_up(pool, schema))
    stop_all(workers)
    check_view(pool, schema)
    with pool.connection() as conn:
        stale = conn.execute(
            sql.SQL(
                "SELECT partition, generation, count(*) FROM {} a WHERE owner = 'w1' AND"
                " (partition, generation) IN (SELECT * FROM unnest(%s::int[], %s::bigint[]))"
                " AND applied_at > (SELECT t FROM unnest(%s::int[], %s::timestamptz[])"
                " AS x(p, t) WHERE x.p = a.partition) GROUP BY 1, 2"
            ).format(sql.Identifier(schema, "audit")),
            (
                list(lost),
                list(lost.values()),
                list(taken),
                [taken[k][2] for k in taken],
            ),
        ).fetchall()
    assert stale == [], f"w1 committed under leases it had lost: {stale}"
    assert (tmp_path / "w1.log").read_text().count("not committing") >= 1


def test_splitting_4_partitions_into_8_under_load_loses_and_doubles_nothing(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    workers: dict[str, subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    with pool.connection() as conn:
        record_partitions(conn, schema, Audit.name, 4)
    with Writers(shop):
        for w in ("w1", "w2"):
            launch(workers, w, database_url, schema, tmp_path)
        wait_for("4 partitions shared by 2", lambda: fair(owners(pool, schema), {"w1", "w2"}, 4))
        time.sleep(1.5)
        with pool.connection() as conn:
            done = split(conn, schema, Audit.name, Audit.partitions, 8)
        assert (done.before, done.after) == (4, 8)
        wait_for("8 partitions shared by 2", lambda: fair(owners(pool, schema), {"w1", "w2"}, 8))
        time.sleep(1.5)
    wait_for("caught up", lambda: caught_up(pool, schema))
    stop_all(workers)
    check_view(pool, schema)
    with pool.connection() as conn:
        partitions = conn.execute(
            sql.SQL("SELECT DISTINCT partition FROM {} WHERE partition >= 4").format(
                sql.Identifier(schema, "audit")
            )
        ).fetchall()
    assert partitions, "no event was applied by the new partitions 4..7"


def test_operators_split_and_rebuild_partitions_of_a_running_projection_from_the_cli(
    shop: Shop,
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    env = {**os.environ, "DATABASE_URL": database_url, "EVENTKIT_SCHEMA": schema}
    command = [
        sys.executable,
        "-m",
        "eventkit.cli",
        "workers",
        "order_summaries",
        "--projections-only",
        "--heartbeat",
        "0.5",
        "--lease-ttl",
        "3",
    ]
    procs = []
    try:
        with Writers(shop):
            for i in range(2):
                with (tmp_path / f"cli{i}.log").open("ab") as log:
                    procs.append(
                        subprocess.Popen(
                            [*command, "--id", f"cli{i}"],
                            cwd=ROOT,
                            env=env,
                            stdout=log,
                            stderr=log,
                        )
                    )
            assert eventkit(["partitions", "order_summaries", "--set", "4"]) == 0
            assert "1 -> 4 partitions (online split" in capsys.readouterr().out
            wait_for(
                "4 partitions over cli0 and cli1",
                lambda: owners(pool, schema, "order_summaries") == {"cli0": 2, "cli1": 2},
            )
            time.sleep(1.0)
            assert eventkit(["partitions", "order_summaries", "--set", "3"]) == 0
            out = capsys.readouterr().out
            assert "is not a split: rebuilding" in out
            assert "rebuilt order_summaries" in out
            wait_for(
                "3 partitions taken",
                lambda: sum(owners(pool, schema, "order_summaries").values()) == 3,
            )
            time.sleep(1.0)
        wait_for("lag 0", lambda: _status(capsys)["projections"][0]["lag_events"] == 0)
        status = _status(capsys)
        [summaries] = status["projections"]
        assert [p["partition"] for p in summaries["partitions"]] == [0, 1, 2]
        assert {p["owner"] for p in summaries["partitions"]} == {"cli0", "cli1"}
        members = {m["worker_id"]: m for m in status["workers"]}
        assert set(members) == {"cli0", "cli1"}
        assert all(m["connections"] <= 1 + 1 + 16 for m in members.values())
        assert eventkit(["status", "order_summaries"]) == 0
        text = capsys.readouterr().out
        assert "order_summaries: 3 partition(s) by stream" in text
        assert "max connections" in text
    finally:
        for p in procs:
            p.terminate()
        codes = [p.wait(30) for p in procs]
    assert codes == [0, 0]
    replay_equals_live(pool, settings_for(database_url, schema), [OrderSummaries])


def _status(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert eventkit(["status", "order_summaries", "--json"]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data

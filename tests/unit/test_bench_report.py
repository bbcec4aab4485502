"""The benchmarks' pure helpers: percentiles, the table, the rows written to ``--json``."""

from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import asdict
from pathlib import Path

import pytest

from eventkit.benchmarks import build_parser
from eventkit.benchmarks.append import (
    FULL,
    AppendResult,
    Case,
    plan,
    summarise,
    table,
    with_ratios,
)
from eventkit.benchmarks.payload import sample_payload
from eventkit.benchmarks.report import format_table, percentile, write_json
from eventkit.benchmarks.spread import default_runs, format_spread, format_value, run_suite
from eventkit.benchmarks.spread import summarise as summarise_runs
from eventkit.benchmarks.workers import Sample


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 50) == statistics.median(values)
    assert percentile([7.0], 99) == 7.0


def test_percentile_agrees_with_the_inclusive_method_of_statistics() -> None:
    values = [random.Random(1).random() for _ in range(1001)]
    quantiles = statistics.quantiles(values, n=100, method="inclusive")
    assert percentile(values, 99) == pytest.approx(quantiles[98])


@pytest.mark.parametrize("q", [-1, 101])
def test_percentile_rejects_a_rank_outside_0_to_100(q: float) -> None:
    with pytest.raises(ValueError, match=str(q)):
        percentile([1.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_table_aligns_text_left_and_numbers_right() -> None:
    text = format_table(["system", "events/s"], [["eventkit", "12,345"], ["es", "678"]])
    assert text.splitlines() == [
        "system    events/s",
        "--------  --------",
        "eventkit    12,345",
        "es             678",
    ]


def test_table_rejects_a_row_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        format_table(["a", "b"], [["1"]])


def _result(system: str, writers: int, batch: int, events: int) -> AppendResult:
    sample = Sample(latencies_s=[0.001, 0.002, 0.003], events=events, cpu_s=0.5)
    return summarise(Case(system, writers, batch), "processes", FULL, [sample], 0.25)


def test_rows_compare_each_eventkit_row_with_eventsourcing_in_the_same_row() -> None:
    results = with_ratios(
        [
            _result("eventkit", 16, 1, 40_000),
            _result("eventsourcing", 16, 1, 8_000),
            _result("eventkit+notify", 16, 1, 20_000),
            _result("eventkit", 1, 100, 80_000),
        ]
    )
    assert [r.ratio_vs_eventsourcing for r in results] == [
        pytest.approx(5.0),
        None,
        pytest.approx(2.5),
        None,
    ]
    assert "5.00x" in table(results)


def test_json_rows_carry_what_the_docs_read(tmp_path: Path) -> None:
    result = _result("eventkit", 4, 100, 8_000)
    path = tmp_path / "append.json"
    write_json(path, [asdict(result)])
    [row] = json.loads(path.read_text())
    assert row["suite"] == "append"
    assert row["system"] == "eventkit"
    assert (row["writers"], row["batch"], row["mode"]) == (4, 100, "processes")
    assert row["events_per_s"] == 8_000 / FULL.duration_s
    assert row["p50_ms"] == pytest.approx(2.0)
    assert row["p99_ms"] == pytest.approx(2.98)
    assert row["client_cpu_us_per_event"] == pytest.approx(0.5 / 8_000 * 1e6)
    assert row["server_cpu_us_per_event"] == pytest.approx(0.25 / 8_000 * 1e6)


def test_a_row_without_saves_has_no_latencies() -> None:
    result = summarise(Case("eventkit", 1, 1000), "threads", FULL, [Sample()], None)
    assert (result.events_per_s, result.p50_ms, result.p99_ms) == (0, None, None)
    assert result.client_cpu_us_per_event is None


def test_the_plan_measures_both_systems_in_every_row_and_notify_at_16_writers() -> None:
    cases = plan()
    rows = {(c.writers, c.batch) for c in cases}
    for writers, batch in rows:
        systems = {c.system for c in cases if (c.writers, c.batch) == (writers, batch)}
        assert {"eventkit", "eventsourcing"} <= systems
    assert {(c.writers, c.batch) for c in cases if c.system == "eventkit+notify"} == {(16, 1)}
    assert {(1, 1), (4, 1), (16, 1), (1, 100), (1, 1000)} <= rows


def test_the_payload_is_about_300_bytes_of_nested_json() -> None:
    rng = random.Random(7)
    payloads = [sample_payload(rng) for _ in range(200)]
    assert 250 <= statistics.mean(len(p) for p in payloads) <= 350
    assert isinstance(json.loads(payloads[0])["customer"], dict)


def _run(number: int, rates: list[float]) -> list[dict[str, object]]:
    return [
        {**asdict(_result("eventkit", writers, 1, 0)), "events_per_s": rate, "run": number}
        for writers, rate in zip((1, 16), rates, strict=True)
    ]


def test_the_spread_gives_each_figure_its_median_min_and_max_over_the_runs() -> None:
    runs = [_run(1, [900.0, 4_000.0]), _run(2, [1_100.0, 5_000.0]), _run(3, [1_000.0, 3_000.0])]
    spreads = {(s.row, s.figure): s for s in summarise_runs(runs)}
    one = spreads[("append eventkit writers=1 batch=1 processes", "events_per_s")]
    assert (one.median, one.low, one.high, one.runs) == (1_000.0, 900.0, 1_100.0, 3)
    sixteen = spreads[("append eventkit writers=16 batch=1 processes", "events_per_s")]
    assert (sixteen.median, sixteen.low, sixteen.high) == (4_000.0, 3_000.0, 5_000.0)
    # Figures equal in every run are the row's setup, not measures; bools and text neither.
    assert not {figure for _, figure in spreads} & {"writers", "batch", "duration_s", "run"}
    text = format_spread(list(spreads.values()))
    assert "1,000  900 - 1,100" in text
    assert "4,000  3,000 - 5,000" in text
    assert text.splitlines()[0].split() == ["row", "figure", "median", "min", "-", "max", "runs"]


def test_the_spread_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    [spread] = [
        s
        for s in summarise_runs([_run(1, [1.0, 2.0]), _run(2, [3.0, 2.0])])
        if s.figure == "events_per_s"
    ]
    assert (spread.median, spread.low, spread.high) == (2.0, 1.0, 3.0)
    assert format_value(2.0) == "2.00"
    assert format_value(12_345.6) == "12,346"


def test_runs_whose_rows_do_not_match_are_refused() -> None:
    with pytest.raises(ValueError, match="different numbers of rows"):
        summarise_runs([_run(1, [1.0, 2.0]), _run(2, [1.0, 2.0])[:1]])
    with pytest.raises(ValueError, match="no runs"):
        summarise_runs([])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["append"], 3), (["append", "--quick"], 1), (["live", "--runs", "5"], 5)],
)
def test_a_full_run_repeats_three_times_and_a_quick_one_once(
    argv: list[str], expected: int
) -> None:
    assert default_runs(build_parser().parse_args(argv)) == expected


def test_every_suite_takes_runs() -> None:
    parser = build_parser()
    suites = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in suites.choices:
        assert default_runs(parser.parse_args([name, "--runs", "2"])) == 2, name


def test_the_json_keeps_every_run_and_the_table_its_spread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rates = iter([10.0, 30.0, 20.0])

    def suite(args: argparse.Namespace) -> int:
        write_json(args.json, [{"suite": "x", "system": "eventkit", "events_per_s": next(rates)}])
        return 0

    target = tmp_path / "out.json"
    args = argparse.Namespace(json=target, quick=False, runs=None)
    assert run_suite(args, suite) == 0
    rows = json.loads(target.read_text())
    assert [(r["run"], r["events_per_s"]) for r in rows] == [(1, 10.0), (2, 30.0), (3, 20.0)]
    assert args.json == target
    out = capsys.readouterr().out
    assert "=== run 3 of 3 ===" in out
    assert "spread over 3 runs" in out
    assert "x eventkit  events_per_s   20.00  10.00 - 30.00     3" in out

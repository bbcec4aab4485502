"""Running a suite several times (``--runs N``) and reporting each figure's spread.

A benchmark on a shared 2-core machine varies from run to run: one run's figure says little.
Every suite takes ``--runs N`` (default 3 for a full run, 1 with ``--quick``): the suite runs
N times, each run printing its own table, and then one table gives, for every row and every
measured figure that varies, the median with the smallest and largest of the runs. With
``--json FILE`` the file keeps every run's rows, each with its ``run`` number (1..N).

A suite's runs measure the same rows in the same order, so the k-th row of each run is the
same row; its label is made of the row's text fields and of the whole numbers that are the
same in every run (writers, batch size); the figures are the numbers that differ.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventkit.benchmarks.report import format_table, write_json

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Spread:
    """One figure of one row over the runs: its median, smallest and largest value."""

    row: str
    figure: str
    median: float
    low: float
    high: float
    runs: int


def default_runs(args: argparse.Namespace) -> int:
    """``--runs`` if given, else 1 for a ``--quick`` run and 3 for a full one."""
    runs: int | None = getattr(args, "runs", None)
    if runs is not None:
        return runs
    return 1 if getattr(args, "quick", False) else 3


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: Whole-number fields that name a row rather than measure it.
_COUNT_KEYS = frozenset({"writers", "batch", "rate", "partitions", "workers", "rounds"})


def _label(rows: Sequence[Record], index: int) -> str:
    """A row's name: its suite (first, as the suites' tables show it), its other text
    fields and the counts every run agrees on (``writers=16``)."""
    parts = []
    first = dict(rows[0])
    ordered = {"suite": first.pop("suite")} if "suite" in first else {}
    for key, value in {**ordered, **first}.items():
        if key == "run" or not all(row.get(key) == value for row in rows):
            continue
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, bool) or (key in _COUNT_KEYS and isinstance(value, int)):
            parts.append(f"{key}={value}")
    return " ".join(parts) or f"row {index + 1}"


def summarise(runs: Sequence[Sequence[Record]]) -> list[Spread]:
    """Each row's varying figures over ``runs`` (lists of one run's rows, in the same order).

    A figure is a number (not a bool) present in every run's row; one equal in every run is
    part of the row's setup, not a measure, and is left out. Runs of different lengths are
    an error: their rows cannot be matched.
    """
    if not runs:
        raise ValueError("no runs to summarise")
    lengths = {len(rows) for rows in runs}
    if len(lengths) != 1:
        raise ValueError(f"runs have different numbers of rows: {sorted(lengths)}")
    spreads = []
    for index in range(lengths.pop()):
        rows = [run[index] for run in runs]
        label = _label(rows, index)
        for key, value in rows[0].items():
            if key == "run" or not _is_number(value):
                continue
            numbers = [float(row[key]) for row in rows if _is_number(row.get(key))]
            if len(numbers) != len(rows):
                continue
            if len(runs) > 1 and len(set(numbers)) == 1:
                continue
            if len(runs) == 1 and key in _COUNT_KEYS:
                continue
            spreads.append(
                Spread(
                    row=label,
                    figure=key,
                    median=statistics.median(numbers),
                    low=min(numbers),
                    high=max(numbers),
                    runs=len(numbers),
                )
            )
    return spreads


def format_value(value: float) -> str:
    """A figure with thousands separators: no decimals from 100 up, two below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def format_spread(spreads: Sequence[Spread]) -> str:
    """The spreads as a table: row, figure, median and (min - max) of the runs."""
    rows = [
        [
            s.row,
            s.figure,
            format_value(s.median),
            f"{format_value(s.low)} - {format_value(s.high)}",
            str(s.runs),
        ]
        for s in spreads
    ]
    return format_table(["row", "figure", "median", "min - max", "runs"], rows)


def run_suite(args: argparse.Namespace, suite: Callable[[argparse.Namespace], int]) -> int:
    """Run ``suite`` ``--runs`` times, print the spread of its figures, keep every run's rows.

    Each run writes its rows to a file of its own (the suite's ``--json``); the rows of all
    runs, each marked with its ``run``, go to the ``--json`` the user gave.
    """
    count = default_runs(args)
    if count < 1:
        raise SystemExit(f"--runs must be at least 1, not {count}")
    target: Path | None = getattr(args, "json", None)
    runs: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="eventkit-bench-") as folder:
        for number in range(1, count + 1):
            if count > 1:
                print(f"\n=== run {number} of {count} ===", flush=True)
            args.json = Path(folder) / f"run{number}.json"
            code = suite(args)
            if code != 0:
                return code
            rows = json.loads(args.json.read_text()) if args.json.exists() else []
            runs.append([{**row, "run": number} for row in rows])
    args.json = target
    if count > 1 and any(runs):
        print(f"\nspread over {count} runs: median (min - max) of each figure that varies")
        print(format_spread(summarise(runs)))
    if target is not None:
        write_json(target, [row for rows in runs for row in rows])
        print(f"wrote {target} ({count} run(s))")
    return 0

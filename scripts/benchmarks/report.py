"""Summarising and showing benchmark results: percentiles, a text table, a JSON file."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) of ``values``, interpolating between ranks.

    This is the "linear" method of numpy and of ``statistics.quantiles(method="inclusive")``:
    the 50th percentile of an even count is the mean of the two middle values.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    fraction = position - below
    return ordered[below] + (ordered[above] - ordered[below]) * fraction


def format_rate(value: float) -> str:
    """A rate with thousands separators and no decimals: ``12,345``."""
    return f"{value:,.0f}"


def format_ms(value: float) -> str:
    """Milliseconds with two decimals below 100 ms, one above."""
    return f"{value:.2f}" if value < 100 else f"{value:.1f}"


def format_ratio(value: float | None) -> str:
    """A ratio such as ``5.3x``, or ``-`` when there is nothing to compare with."""
    return "-" if value is None else f"{value:.2f}x"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Lay out ``rows`` under ``headers`` in aligned columns.

    Text columns are left-aligned; a column whose cells all look numeric is right-aligned.
    """
    if any(len(row) != len(headers) for row in rows):
        raise ValueError(f"every row needs {len(headers)} cells")
    widths = [
        max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)
    ]
    numeric = [
        bool(rows) and all(_looks_numeric(row[i]) for row in rows) for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def _looks_numeric(cell: str) -> bool:
    stripped = cell.replace(",", "").replace(".", "").rstrip("x")
    return cell == "-" or stripped.isdigit()


def write_json(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Write ``records`` to ``path`` as one JSON list, one object per measured row."""
    path.write_text(json.dumps(list(records), indent=2) + "\n")

"""``eventkit demo``: the example shop under a realistic workload."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    commands.add_parser("demo", help="run the example shop through a workload")

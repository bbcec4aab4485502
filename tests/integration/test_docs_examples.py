"""Every ```python block in the README and docs/ runs, against the test database."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def examples() -> list[tuple[str, str]]:
    """One example per file: its python blocks, run in order in one namespace."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        blocks = FENCE.findall(path.read_text())
        if blocks:
            found.append((str(path.relative_to(ROOT)), "\n".join(blocks)))
    return found


def test_there_are_examples_to_run() -> None:
    assert any(name.startswith("README.md") for name, _ in examples())


@pytest.mark.parametrize(("name", "code"), examples(), ids=[n for n, _ in examples()])
def test_example_runs(
    name: str, code: str, database_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    # A module of its own, so eventsourcing can resolve the topics of classes it defines.
    module_name = "docs_example_" + re.sub(r"\W", "_", name)
    module = types.ModuleType(module_name)
    monkeypatch.setitem(sys.modules, module_name, module)
    exec(compile(code, name, "exec"), module.__dict__)

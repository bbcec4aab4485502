"""Every ```python block in the README and docs/ runs against the test database, twice on the
same schema: an example a reader runs again must not fail (a second run meets the first one's
events, views and positions)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
from eventsourcing.utils import clear_topic_cache

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
def test_example_runs_twice(
    name: str, code: str, database_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    # A module of its own, so eventsourcing can resolve the topics of the classes it
    # defines; a fresh one (of the same name, as a reader's second run would be) each time.
    module_name = "docs_example_" + re.sub(r"\W", "_", name)
    for run in (1, 2):
        # eventsourcing caches each class's topic and refuses a second class under it; a
        # second process would start with an empty cache, and so does the second run.
        clear_topic_cache()
        module = types.ModuleType(module_name)
        monkeypatch.setitem(sys.modules, module_name, module)
        try:
            exec(compile(code, name, "exec"), module.__dict__)
        except Exception as e:
            raise AssertionError(f"{name}: run {run} of its examples failed: {e!r}") from e


#: docs/own-service.md shows the second application's files (```py, ```toml blocks), which
#: tests/integration/test_second_app.py runs: each block must still be a piece of one of them.
GUIDE = ROOT / "docs" / "own-service.md"
SECOND_APP = ROOT / "tests" / "second_app"
QUOTED = re.compile(r"```(?:py|toml)\n(.*?)```", re.DOTALL)


def lines(text: str) -> list[str]:
    """The non-blank lines of ``text``, without their indentation (ruff formats the guide's
    blocks as code of their own: a method quoted alone loses its class's indentation)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_the_own_service_guide_quotes_the_second_application() -> None:
    sources = [
        lines(p.read_text())
        for p in [*SECOND_APP.rglob("*.py"), SECOND_APP / "pyproject.toml"]
        if "__pycache__" not in p.parts
    ] + [lines((ROOT / "tests" / "integration" / "test_second_app.py").read_text())]
    blocks = [lines(block) for block in QUOTED.findall(GUIDE.read_text())]
    assert len(blocks) >= 10

    def quoted(block: list[str], source: list[str]) -> bool:
        return any(source[i : i + len(block)] == block for i in range(len(source)))

    stale = [b for b in blocks if not any(quoted(b, source) for source in sources)]
    assert stale == [], "docs/own-service.md quotes code the second application no longer has"

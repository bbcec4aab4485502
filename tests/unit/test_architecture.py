"""The package's shape: imports run one way, the toolkit never imports the example shop,
and the ``eventkit`` command stays light.

Imports run one way: domain <- infrastructure <- projections <- scripts (the package
``eventkit`` itself). The example shop lives in ``shop`` subpackages of each folder and is
imported only by other shop modules (and by tests): a module of the toolkit that imported
it would make every service that installs eventkit carry the shop.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Folder -> its import package.
PACKAGES = {
    "domain": "eventkit.domain",
    "infrastructure": "eventkit.infrastructure",
    "projections": "eventkit.projections",
    "scripts": "eventkit",
}

#: What the modules of each folder may not import.
FORBIDDEN = {
    "domain": (
        "psycopg",
        "psycopg_pool",
        "dramatiq",
        "eventkit.infrastructure",
        "eventkit.projections",
        "eventkit.cli",
        "eventkit.runner",
        "eventkit.loading",
        "eventkit.testing",
        "eventkit.bootstrap",
    ),
    "infrastructure": (
        "eventkit.projections",
        "eventkit.cli",
        "eventkit.runner",
        "eventkit.loading",
        "eventkit.testing",
        "eventkit.bootstrap",
    ),
    "projections": (
        "eventkit.cli",
        "eventkit.runner",
        "eventkit.loading",
        "eventkit.testing",
        "eventkit.bootstrap",
    ),
}

#: The repository's old top-level names: nothing may import them any more.
OLD_NAMES = ("domain", "infrastructure", "projections", "scripts")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: use absolute imports (eventkit....)")
            if node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def is_shop(module: str) -> bool:
    return ".shop" in f".{module}." and module.startswith("eventkit")


def module_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_package_imports_only_inward(folder: str) -> None:
    files = module_files(folder)
    assert files, f"no Python files under {folder}/"
    offences = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if any(matches(m, f) for f in FORBIDDEN[folder])
        )
        for path in files
    }
    assert {k: v for k, v in offences.items() if v} == {}


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_no_module_outside_the_shop_imports_the_shop(folder: str) -> None:
    offences = {}
    for path in module_files(folder):
        relative = path.relative_to(ROOT)
        if "shop" in relative.parts or "benchmarks" in relative.parts:
            continue  # the shop itself, and the benchmarks that measure it
        found = sorted(m for m in imported_modules(path) if is_shop(m))
        if found:
            offences[str(relative)] = found
    assert offences == {}


def test_nothing_imports_the_old_top_level_names() -> None:
    offences = {}
    for path in sorted(ROOT.glob("*/**/*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in {".venv", ".eventkit", "build"} or "second_app" in relative.parts:
            continue
        found = sorted(
            m for m in imported_modules(path) if any(matches(m, old) for old in OLD_NAMES)
        )
        if found:
            offences[str(relative)] = found
    assert offences == {}


def test_the_guard_sees_an_offending_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import psycopg\nfrom eventkit.infrastructure.recorder import X\n"
        "from eventkit.projections.shop import app\n"
    )
    found = imported_modules(module)
    assert "psycopg" in found
    assert any(matches(m, "eventkit.infrastructure") for m in found)
    assert any(is_shop(m) for m in found)


def test_the_eventkit_command_imports_neither_the_database_driver_nor_the_application() -> None:
    """``eventkit --help`` builds its parser without psycopg, eventsourcing, pydantic,
    dramatiq, the benchmarks, the demo or any application."""
    code = (
        "import sys, contextlib, io\n"
        "from eventkit.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "heavy = ('psycopg', 'eventsourcing', 'pydantic', 'dramatiq', 'eventkit.benchmarks',\n"
        "         'eventkit.shop', 'eventkit.projections', 'eventkit.infrastructure')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or\n"
        "             any(m.startswith(h) for h in heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"

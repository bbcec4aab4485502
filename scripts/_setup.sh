# Sourced by scripts/demo, scripts/test and scripts/bench: make .venv and install eventkit.
# Needs only Python 3.11+ on PATH (or in $PYTHON). Re-installs when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "eventkit needs Python 3.11 or newer: install it, or point PYTHON at one." >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  PY="$(find_python)"
  echo "==> creating .venv with $PY"
  "$PY" -m venv .venv
fi

stamp=".venv/.eventkit-installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing eventkit and its development tools into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"

# The source tree shaped as the installed package, for mypy (pyproject.toml: tool.mypy):
# .venv/src/eventkit holds links to scripts/'s modules and to the three layer folders.
# Made again on every run, so a new module is seen at once.
link_tree() {
  local tree="$ROOT/.venv/src/eventkit"
  rm -rf "$ROOT/.venv/src"
  mkdir -p "$tree"
  local entry
  for entry in "$ROOT"/scripts/*.py "$ROOT"/scripts/py.typed "$ROOT"/scripts/*/; do
    entry="${entry%/}"
    [ -e "$entry" ] || continue
    if [ -d "$entry" ] && [ ! -f "$entry/__init__.py" ]; then continue; fi
    ln -s "$entry" "$tree/$(basename "$entry")"
  done
  for layer in domain infrastructure projections; do
    ln -s "$ROOT/$layer" "$tree/$layer"
  done
}
link_tree

"""Status warnings, on a stand-in for the connection (the real server: test_gap_safety)."""

from __future__ import annotations

from typing import Any, cast

import psycopg
import pytest

from eventkit.projections.status import autovacuum_warning


class _Setting:
    """Answers ``SELECT current_setting('autovacuum')`` as a server with ``value`` would."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.queries: list[str] = []

    def execute(self, query: str) -> _Setting:
        self.queries.append(query)
        return self

    def fetchone(self) -> tuple[str]:
        return (self.value,)


@pytest.mark.parametrize(("value", "warned"), [("off", True), ("on", False)])
def test_autovacuum_off_is_a_warning(value: str, warned: bool) -> None:
    server = _Setting(value)
    warning = autovacuum_warning(cast(psycopg.Connection[Any], server))
    assert server.queries == ["SELECT current_setting('autovacuum')"]
    assert (warning is not None) == warned
    if warning is not None:
        assert warning.startswith("autovacuum is off on this server")
        assert "docs/reactions.md" in warning

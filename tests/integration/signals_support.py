"""Ctrl-C for a command that a test starts."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def ctrl_c_reaches_children() -> Iterator[None]:
    """Start processes in this block with SIGINT at its default, so that Python gives them
    KeyboardInterrupt: a test run started in the background by a shell (`./.ci/run &`)
    ignores SIGINT, a child inherits an ignored signal across exec, and a Python started
    with SIGINT ignored never raises KeyboardInterrupt. A handled signal is reset to its
    default by exec, so handling it here for the block is enough (main thread only)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

"""The composition root: the one place where eventkit's parts are wired together."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Mapping
from types import FrameType

from eventkit.infrastructure.settings import Settings


def settings_with(overrides: Mapping[str, str]) -> Settings:
    """Settings from the process environment with ``overrides`` on top."""
    import os

    return Settings.from_env({**os.environ, **overrides})


#: The collector's thresholds in long-running worker processes (CPython's are 700, 10, 10).
GC_THRESHOLDS = (10_000, 50, 50)


def tune_gc() -> None:
    """Tune the garbage collector for a process that decodes many short-lived events.

    What start-up allocated (modules, classes) is moved out of the collector's sight
    (``gc.freeze``), and the young generation may grow to 10,000 objects before it is
    collected. ``eventkit workers`` and ``rebuild`` call it; ``./scripts/bench catchup``
    and ``live`` too, in the one process that runs both systems' projections. Measured
    here: +15% catch-up throughput.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT (Ctrl-C) sets: workers finish their batches in hand
    and stop. Call it from the main thread."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger(__name__).info(
            "received %s: finishing the current batches", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop

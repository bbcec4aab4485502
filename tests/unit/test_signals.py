"""The workers' signal handling: a second SIGTERM during shutdown never hangs (issue 17,
point 7)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from eventkit.bootstrap import stop_on_signals


@pytest.fixture
def restored_signals() -> Iterator[None]:
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    yield
    signal.set_wakeup_fd(wakeup)
    signal.signal(signal.SIGTERM, handlers[0])
    signal.signal(signal.SIGINT, handlers[1])


def test_the_handler_takes_no_lock_and_the_signal_still_stops(restored_signals: None) -> None:
    stop = stop_on_signals()
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    # A handler runs between two bytecodes of the main thread, which may be inside
    # stop.set() for the first signal, holding the event's lock (a private attribute, used
    # here only to stand for that moment). A handler that set the event waited forever.
    with stop._cond:  # type: ignore[attr-defined]
        second = threading.Thread(target=handler, args=(signal.SIGTERM, None), daemon=True)
        second.start()
        second.join(10)
        assert not second.is_alive(), "the signal handler waited on the stop event's lock"
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.wait(30), "SIGTERM did not set the stop event"

"""Time limits on reaction handlers: a handler that runs past its limit is interrupted.

dramatiq's ``TimeLimit`` middleware would do this for a whole message, but its timer thread
starts on the ``process_boot`` signal, which only dramatiq's own command emits (eventkit
runs ``dramatiq.Worker`` in its own process), and once started its exception may land
anywhere in the message's processing, in the middle of the record's ``COMMIT`` as well. So
eventkit limits the handler alone: :meth:`TimeLimits.run` calls it, and a monitor thread
raises :class:`HandlerInterrupted` in the handler's thread once its deadline passes, the
way dramatiq does, through CPython's ``PyThreadState_SetAsyncExc`` (a documented C API).
``run`` then raises :class:`TimeLimitExceededError`, an ordinary exception: the executor
counts the try as failed, retries with backoff, and parks the message after its last try.

Python delivers such an exception only when the thread runs Python code: a call blocked in
C (a socket read, ``time.sleep``) is interrupted when it returns. Give network calls a
timeout below the limit. On interpreters other than CPython nothing is interrupted; a
handler found past its limit when it returns still fails its try.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from eventkit.infrastructure.errors import EventkitError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How often the monitor looks for handlers past their deadline.
CHECK_INTERVAL_S = 0.05
_CPYTHON = platform.python_implementation() == "CPython"


class HandlerInterrupted(BaseException):
    """Raised inside a handler's thread when it runs past its time limit.

    A BaseException, as dramatiq's ``TimeLimitExceeded`` is: a handler's ``except
    Exception`` does not swallow it."""


class TimeLimitExceededError(EventkitError):
    """A handler ran past its time limit (a failed try)."""


@dataclass(eq=False)
class _Run:
    thread: int
    deadline: float
    fired: bool = field(default=False)


class TimeLimits:
    """Interrupts the handlers that :meth:`run` calls once they pass their deadline."""

    def __init__(self, interval_s: float = CHECK_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._runs: dict[int, _Run] = {}
        self._monitor: threading.Thread | None = None

    def run(self, limit_s: float, call: Callable[[], T], *, what: str | Callable[[], str]) -> T:
        """Return ``call()``, or raise :class:`TimeLimitExceededError` (naming ``what``)
        when it ran longer than ``limit_s`` seconds. ``what`` may be a function that
        describes the call, run only then (a reaction's names its stream, version and
        message: formatting those UUIDs took ~4 us of every message)."""
        started = time.monotonic()
        run = _Run(threading.get_ident(), started + limit_s)
        # Every place the interruption can arrive is inside the outer try: between the
        # registration and the call, in the call, and in the cleanup before the pending
        # exception is withdrawn; after that, none can arrive.
        try:
            try:
                self._add(run)
                result = call()
            finally:
                fired = self._remove(run)
        except HandlerInterrupted:
            self._remove(run)
            raise self._exceeded(limit_s, started, what) from None
        if fired:  # past its deadline, returned before the interruption arrived
            raise self._exceeded(limit_s, started, what)
        return result

    @staticmethod
    def _exceeded(
        limit_s: float, started: float, what: str | Callable[[], str]
    ) -> TimeLimitExceededError:
        if not isinstance(what, str):
            what = what()
        return TimeLimitExceededError(
            f"{what} ran past its time limit of {limit_s:g} s (stopped after "
            f"{time.monotonic() - started:.1f} s)"
        )

    def _add(self, run: _Run) -> None:
        with self._lock:
            self._runs[run.thread] = run
            if self._monitor is None or not self._monitor.is_alive():
                self._monitor = threading.Thread(
                    target=self._watch, name="eventkit-time-limits", daemon=True
                )
                self._monitor.start()

    def _remove(self, run: _Run) -> bool:
        """Forget ``run``; withdraw an interruption sent but not yet delivered. Returns
        whether the run passed its deadline."""
        with self._lock:
            if self._runs.get(run.thread) is run:
                del self._runs[run.thread]
            if run.fired and _CPYTHON:
                _set_async_exception(run.thread, None)
            return run.fired

    def _watch(self) -> None:
        while True:
            time.sleep(self.interval_s)
            now = time.monotonic()
            with self._lock:
                for run in self._runs.values():
                    if not run.fired and now >= run.deadline:
                        # Under the lock: _remove cannot pass between the check and the
                        # interruption, so it always knows whether one was sent.
                        run.fired = True
                        if _CPYTHON:
                            _set_async_exception(run.thread, HandlerInterrupted)


def _set_async_exception(thread: int, exception: type[BaseException] | None) -> None:
    """Raise ``exception`` in ``thread`` at its next Python instruction (None withdraws a
    pending one): https://docs.python.org/3/c-api/init.html#c.PyThreadState_SetAsyncExc"""
    value = ctypes.py_object(exception) if exception is not None else None
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), value)
    if changed > 1:  # pragma: no cover - a thread id is unique among live threads
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), None)
        logger.error("time limit: thread %d matched %d thread states; undone", thread, changed)


#: The process's time limits, shared by every reaction executor.
HANDLER_TIME_LIMITS = TimeLimits()

"""Time limits on handlers: interrupted past the limit, untouched within it."""

from __future__ import annotations

import contextlib
import time

import pytest

from eventkit.projections.timelimits import TimeLimitExceededError, TimeLimits


def busy(seconds: float) -> str:
    """Python code that keeps running (short sleeps), as a handler waiting in a loop."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "finished"


def test_a_call_within_its_limit_returns_its_result() -> None:
    assert TimeLimits().run(5.0, lambda: busy(0.05), what="quick") == "finished"


def test_a_call_past_its_limit_is_interrupted() -> None:
    started = time.monotonic()
    with pytest.raises(TimeLimitExceededError, match=r"slow ran past its time limit of 0\.2 s"):
        TimeLimits(interval_s=0.01).run(0.2, lambda: busy(30), what="slow")
    assert time.monotonic() - started < 20  # interrupted, not run to its end


def test_an_except_exception_in_the_call_does_not_swallow_the_interruption() -> None:
    def handler() -> str:
        try:
            return busy(30)
        except Exception:  # what a handler might do around a call out
            return "swallowed"

    with pytest.raises(TimeLimitExceededError):
        TimeLimits(interval_s=0.01).run(0.2, handler, what="careless")


def test_a_call_that_swallows_the_interruption_still_fails_its_try() -> None:
    def handler() -> str:
        try:
            return busy(30)
        except BaseException:
            return "swallowed everything"

    with pytest.raises(TimeLimitExceededError):
        TimeLimits(interval_s=0.01).run(0.2, handler, what="reckless")


def test_no_interruption_outlives_its_call() -> None:
    limits = TimeLimits(interval_s=0.01)
    for _ in range(20):  # calls that end right at their deadline, with or without a result
        with contextlib.suppress(TimeLimitExceededError):
            limits.run(0.02, lambda: busy(0.02), what="borderline")
    # Nothing was left pending for this thread: code after the calls runs undisturbed.
    assert busy(0.2) == "finished"


def test_a_description_given_as_a_function_is_made_only_for_a_call_past_its_limit() -> None:
    described: list[str] = []

    def what() -> str:
        described.append("made")
        return "lazy"

    assert TimeLimits().run(5.0, lambda: "done", what=what) == "done"
    assert described == []
    with pytest.raises(TimeLimitExceededError, match=r"^lazy ran past its time limit"):
        TimeLimits(interval_s=0.01).run(0.2, lambda: busy(30), what=what)
    assert described == ["made"]

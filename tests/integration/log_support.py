"""Waiting for the log to be readable up to its last committed event."""

from __future__ import annotations

import time

from eventkit.infrastructure.recorder import PostgresEventRecorder


def wait_until_readable(recorder: PostgresEventRecorder, timeout: float = 30.0) -> None:
    """Until readers see every event committed so far (the settled head reaches the last
    recorded position).

    A read right after an append can come back short: for its first 10 ms a transaction
    of any other client of the server (another database's too) holds the newest events
    back from readers (docs/architecture.md, the log's horizon). A test that reads what it
    just appended waits for this condition first; the timeout only stops a hang.
    """
    deadline = time.monotonic() + timeout
    while True:
        recorded = recorder.last_recorded()
        if recorded is None or recorder.head() == recorded:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the log's head stayed behind its last recorded position {recorded} "
                f"for {timeout} s"
            )
        time.sleep(0.01)

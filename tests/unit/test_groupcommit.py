"""Group commit's queue on its own (the appends are fakes; tests/integration/
test_group_commit.py runs it on a real server)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from eventkit.infrastructure.groupcommit import GroupCommit, _Group


class Interrupted(RuntimeError):
    pass


class InterruptedLeader(GroupCommit[int]):
    """A leader interrupted (say by KeyboardInterrupt) while it waits for company, once a
    second save has joined its group."""

    def _gather(self, group: _Group[int]) -> None:
        while len(group.saves) < 2:
            self._lock.wait(0.01)
        raise Interrupted("interrupted while waiting for company")


def test_a_leader_interrupted_while_waiting_releases_the_saves_that_joined_it() -> None:
    held = threading.Event()
    own_calls: list[tuple[list[int], BaseException | None]] = []

    def write(rows: list[int]) -> list[int]:
        raise AssertionError("an interrupted group must not be written")

    def own(rows: Sequence[int], error: BaseException | None) -> list[int]:
        own_calls.append((list(rows), error))
        if rows == [0]:
            held.wait(30)  # the save in flight that makes the next one wait for company
        return [r * 10 for r in rows]

    queue = InterruptedLeader(write, own, max_rows=32, window_s=60)
    with ThreadPoolExecutor(4) as executor:
        in_flight = executor.submit(queue.append, [0])
        while not own_calls:
            threading.Event().wait(0.005)
        leader = executor.submit(queue.append, [1])
        while queue.gathering != 1:
            threading.Event().wait(0.005)
        follower = executor.submit(queue.append, [2])
        with pytest.raises(Interrupted):
            leader.result(timeout=30)
        # The save that had joined appends on its own, told why its group failed.
        assert follower.result(timeout=30) == [20]
        assert ([2], leader.exception()) in own_calls
        held.set()
        assert in_flight.result(timeout=30) == [0]
    # Nothing is left open: the next save goes alone at once.
    assert queue.gathering == 0
    assert queue.append([3]) == [30]

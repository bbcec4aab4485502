"""Group commit: saves that arrive together in one process are appended in one transaction.

Threads of one process (a web server's, say) that save at the same moment each pay for a
transaction of their own: a round trip, a commit record and its flush, the server's work per
statement. With group commit on (``EVENTKIT_GROUP_COMMIT``), a save that arrives while other
saves of the same recorder are being appended waits, at most :data:`WINDOW_S`, for company;
the saves that gathered meanwhile go as one multi-row ``INSERT``: one statement, so one
transaction and one round trip.

Who goes when (a leader and its followers):

* A save that finds a group open joins it (if the group has room) and waits for its
  leader's outcome: a follower.
* Otherwise it opens a group and leads it. It closes the group and appends it as soon as
  one of these holds: every save being appended by this recorder is in the group (nothing
  else is in flight, so no one is about to finish and come back); the group is full (up to
  ``max_rows`` rows, one ``INSERT`` of the recorder's multi-row kind); or the window has
  passed. A save alone, with nothing else in flight, therefore goes at once, and no save
  waits longer than the window for company.

Each save keeps its own outcome. The group's statement is atomic: all its saves commit or
none does. When it fails, every save of the group appends again on its own, through the
recorder's ordinary path, in its own thread: a save that conflicts then fails alone with its
own ``ConcurrencyError`` (the others commit), and a save with bad data fails alone with its
own error. When the connection was lost while the group's statement was in flight, its
outcome is not known: each save first looks for its own rows (the recorder's
``own`` callable gets the group's error) and reports them appended, appends again, or raises
``ConcurrencyError`` when another writer holds its versions, exactly as a save alone does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Row = TypeVar("Row")

#: The longest a save waits for company (seconds).
WINDOW_S = 0.001


class _Group(Generic[Row]):
    """The saves gathered by one leader, and, once appended, their outcome.

    Its followers wait on a bare lock that the leader holds until the outcome is known
    (:meth:`finish`); each follower then takes the lock and gives it back, which wakes the
    next. A ``threading.Event`` did the same with a ``Condition`` written in Python: ~10 us to
    construct here (its constructor probes the lock with three caught ``AttributeError``s),
    and a Python loop over the waiters in the leader's ``set()``.
    """

    __slots__ = ("_done", "error", "ids", "rows", "saves")

    def __init__(self) -> None:
        self.saves: list[Sequence[Row]] = []
        self.rows = 0
        self._done = threading.Lock()
        self._done.acquire()  # held until finish(): the group's outcome is not known yet
        self.ids: list[list[int]] | None = None
        self.error: BaseException | None = None

    def finish(self) -> None:
        """The outcome is known (``ids`` or ``error``): release the followers. Once only."""
        self._done.release()

    def wait(self) -> None:
        """Wait until :meth:`finish`."""
        with self._done:  # taken and given back at once: the next follower wakes
            pass

    def add(self, rows: Sequence[Row]) -> int:
        self.saves.append(rows)
        self.rows += len(rows)
        return len(self.saves) - 1


class GroupCommit(Generic[Row]):
    """Gathers concurrent saves of one recorder into groups and appends each group at once.

    ``write(rows)`` appends the rows of several saves in one transaction and returns their
    notification ids in order; ``own(rows, error)`` is a save's ordinary append on its own,
    ``error`` the group's failure (None for a save that went alone).
    """

    def __init__(
        self,
        write: Callable[[list[Row]], list[int]],
        own: Callable[[Sequence[Row], BaseException | None], list[int]],
        *,
        max_rows: int,
        window_s: float = WINDOW_S,
    ) -> None:
        self._write = write
        self._own = own
        self._max_rows = max_rows
        #: The longest a save waits for company, in seconds.
        self.window_s = window_s
        self._lock = threading.Condition(threading.Lock())
        self._open: _Group[Row] | None = None
        #: Saves inside :meth:`append` now: waiting, in a group in flight, or alone.
        self._active = 0
        #: Whether the open group's leader waits on the condition (only it ever does).
        self._leader_waits = False
        #: Groups of more than one save appended, and the saves in them (for tests/metrics).
        self.groups = 0
        self.grouped_saves = 0

    @property
    def gathering(self) -> int:
        """How many saves the open group holds (0 when none is open)."""
        with self._lock:
            return 0 if self._open is None else len(self._open.saves)

    def append(self, rows: Sequence[Row]) -> list[int]:
        """Append one save's ``rows``; return their ids or raise the save's own error."""
        if len(rows) > self._max_rows:
            return self._own(rows, None)
        lock = self._lock
        with lock:
            self._active += 1
            group = self._open
            alone = group is None and self._active == 1
            if group is not None and group.rows + len(rows) <= self._max_rows:
                index = group.add(rows)
                # Wake the leader only when it can go: each wake costs a context switch.
                if self._leader_waits and self._ready(group):
                    lock.notify()
            else:
                group = None
        try:
            if alone:  # nothing else in flight: no one to wait for
                return self._own(rows, None)
            if group is not None:
                return self._follow(group, index, rows)
            return self._lead(rows)
        finally:
            with lock:
                self._active -= 1
                if self._leader_waits and self._open is not None and self._ready(self._open):
                    lock.notify()

    def _follow(self, group: _Group[Row], index: int, rows: Sequence[Row]) -> list[int]:
        group.wait()
        if group.ids is not None:
            return group.ids[index]
        return self._own(rows, group.error)

    def _lead(self, rows: Sequence[Row]) -> list[int]:
        group: _Group[Row] = _Group()
        group.add(rows)
        try:
            with self._lock:
                if self._open is None:
                    self._open = group
                try:
                    self._gather(group)
                finally:
                    if self._open is group:
                        self._open = None  # closed: nobody joins it any more
        except BaseException as error:  # interrupted while waiting: release who joined
            group.error = error
            group.finish()
            raise
        if len(group.saves) == 1:
            group.finish()  # nobody joined (a group closes under the lock, so none will)
            return self._own(rows, None)
        try:
            ids = self._write([row for save in group.saves for row in save])
            group.ids = _split(ids, group.saves)
        except BaseException as error:
            group.error = error
        finally:
            group.finish()  # never leave a follower waiting
        if group.ids is None:
            return self._own(rows, group.error)
        with self._lock:
            self.groups += 1
            self.grouped_saves += len(group.saves)
        return group.ids[0]

    def _gather(self, group: _Group[Row]) -> None:
        """Wait for company until :meth:`_ready` or the window has passed (under the lock)."""
        deadline = time.monotonic() + self.window_s
        while not self._ready(group):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._leader_waits = True
            try:
                self._lock.wait(left)
            finally:
                self._leader_waits = False

    def _ready(self, group: _Group[Row]) -> bool:
        """Whether the leader of ``group`` should stop waiting (called under the lock)."""
        return (
            self._open is not group  # another group was open already: this one goes alone
            or group.rows >= self._max_rows
            or self._active <= len(group.saves)
        )


def _split(ids: list[int], saves: Sequence[Sequence[object]]) -> list[list[int]]:
    """The group's ids, one list per save, in the order of the saves' rows."""
    total = sum(len(save) for save in saves)
    if len(ids) != total:
        raise AssertionError(f"a group of {total} rows got {len(ids)} ids back")
    out = []
    start = 0
    for save in saves:
        out.append(ids[start : start + len(save)])
        start += len(save)
    return out

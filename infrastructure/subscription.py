"""A subscription to the notification log that polls, for eventsourcing's ``subscribe()`` API."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from eventsourcing.persistence import Subscription

from eventkit.infrastructure.log import LoggedNotification, Position

if TYPE_CHECKING:
    from eventkit.infrastructure.recorder import PostgresEventRecorder


class PollingSubscription(Subscription["PostgresEventRecorder"]):
    """Yields notifications in log order, polling for new ones with a growing interval.

    It reads through :meth:`PostgresEventRecorder.read_notifications`, so it is gap-safe.
    ``stop()`` ends the iteration, also from another thread.
    """

    def __init__(
        self,
        recorder: PostgresEventRecorder,
        after: Position,
        topics: Sequence[str] = (),
        *,
        batch_size: int = 500,
        min_interval_s: float = 0.005,
        max_interval_s: float = 0.5,
        above_id: int | None = None,
    ) -> None:
        super().__init__(recorder=recorder, gt=after.notification_id, topics=topics)
        self.position = after
        self._batch_size = batch_size
        self._min_interval_s = min_interval_s
        self._max_interval_s = max_interval_s
        self._above_id = above_id
        self._buffer: list[LoggedNotification] = []
        self._stopped = threading.Event()

    def stop(self) -> None:
        super().stop()
        self._stopped.set()

    def __next__(self) -> LoggedNotification:
        interval = self._min_interval_s
        while not self._buffer:
            if self._stopped.is_set():
                raise StopIteration
            batch = self._recorder.read_notifications(self.position, self._batch_size, self._topics)
            if not batch:
                self._stopped.wait(interval)
                interval = min(interval * 2, self._max_interval_s)
                continue
            self.position = batch[-1].position
            if self._above_id is not None:
                above = self._above_id
                batch = [n for n in batch if n.id > above]
            self._buffer = batch[::-1]
        if self._stopped.is_set():
            raise StopIteration
        return self._buffer.pop()

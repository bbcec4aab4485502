"""Writer processes for the projection benchmarks: they fill the log, in bulk or at a pace.

* :class:`Load`: save ``events`` events as fast as possible, in saves of several new
  streams each (the ``catchup`` suite's log).
* :class:`Pace`: save a new stream of ``batch`` events every ``batch / rate`` seconds from
  a common start until a deadline, and note when each save returned and the notification
  ids it got (the ``live`` suite's offered load). A writer that falls behind its schedule
  saves without pausing until it is back on it, so what it could not offer shows as a
  lower achieved rate, not as a slower schedule.

Each writer is its own process (``forkserver``), so the writers' Python work does not take
the GIL from the projection, which runs in the benchmark's own process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any
from uuid import UUID

from eventsourcing.application import Application

from eventkit.benchmarks.aggregates import OPENERS
from eventkit.benchmarks.proj_systems import EVENTKIT, EventkitLog, PlainLog
from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.factory import close_pools

#: Seconds a writer may take to construct its application and answer.
_READY_TIMEOUT_S = 120.0


class WriterError(EventkitError):
    """A benchmark writer failed; the message carries its traceback."""


@dataclass(frozen=True)
class Load:
    """Save ``events`` events in saves of ``streams_per_save`` new streams of
    ``events_per_stream`` events each."""

    system: str
    env: dict[str, str]
    events: int
    events_per_stream: int
    streams_per_save: int


@dataclass(frozen=True)
class Pace:
    """Save one new stream of ``batch`` events every ``batch / rate`` s, the first
    ``offset_s`` after the start, until ``duration_s`` after it."""

    system: str
    env: dict[str, str]
    rate: float
    batch: int
    offset_s: float
    duration_s: float


@dataclass
class Saved:
    """What one writer did: per save, when it returned and the notification ids it got."""

    saved_at: list[float] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return sum(len(ids) for ids in self.ids)


def serve(conn: Connection) -> None:
    """A writer process's loop: answer ``prepare``, ``run`` and ``stop`` messages."""
    app: Application[UUID] | None = None
    job: Load | Pace | None = None
    try:
        while True:
            message, payload = conn.recv()
            try:
                if message == "stop":
                    break
                if message == "prepare":
                    job = payload
                    assert isinstance(job, Load | Pace)
                    if app is not None:
                        app.close()
                    app_class = EventkitLog if job.system == EVENTKIT else PlainLog
                    app = app_class(env=job.env)
                    conn.send(("ready", None))
                elif message == "run":
                    assert app is not None
                    assert job is not None
                    time.sleep(max(0.0, payload - time.time()))
                    if isinstance(job, Load):
                        conn.send(("done", _load(app, job)))
                    else:
                        conn.send(("done", _pace(app, job, start_at=payload)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        if app is not None:
            app.close()
        close_pools()


def _load(app: Application[UUID], job: Load) -> Saved:
    open_stream = OPENERS[job.system]
    saved = Saved()
    started = time.perf_counter()
    left = job.events
    while left > 0:
        streams = min(job.streams_per_save, -(-left // job.events_per_stream))
        aggregates = [open_stream(job.events_per_stream) for _ in range(streams)]
        recordings = app.save(*aggregates)
        saved.saved_at.append(time.time())
        saved.ids.append([r.notification.id for r in recordings])
        left -= len(recordings)
    saved.seconds = time.perf_counter() - started
    return saved


def _pace(app: Application[UUID], job: Pace, start_at: float) -> Saved:
    open_stream = OPENERS[job.system]
    interval = job.batch / job.rate
    due = start_at + job.offset_s
    until = start_at + job.duration_s
    saved = Saved()
    aggregate = open_stream(job.batch)  # made ahead, while waiting for its turn
    while due < until:
        time.sleep(max(0.0, due - time.time()))
        recordings = app.save(aggregate)
        saved.saved_at.append(time.time())
        saved.ids.append([r.notification.id for r in recordings])
        due += interval
        aggregate = open_stream(job.batch)
    saved.seconds = time.time() - start_at
    return saved


class Writers:
    """``size`` writer processes, each answering on its own pipe."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        self._pipes: list[Connection] = []
        self._processes: list[Any] = []
        for i in range(size):
            parent, child = context.Pipe()
            process = context.Process(
                target=serve, args=(child,), name=f"bench-writer-{i}", daemon=True
            )
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)
        self._running: list[Connection] = []

    @property
    def size(self) -> int:
        return len(self._pipes)

    @property
    def pids(self) -> list[int]:
        """The writer processes' ids (their CPU time is theirs alone: :mod:`.server_cpu`)."""
        return [p.pid for p in self._processes]

    def start(self, jobs: list[Load] | list[Pace], lead_s: float = 0.2) -> float:
        """Give one job to each of the first ``len(jobs)`` writers; return when they start.

        Each writer first constructs its application and answers; then all are told the
        same wall-clock start, ``lead_s`` ahead.
        """
        if not 0 < len(jobs) <= len(self._pipes):
            raise ValueError(f"{len(jobs)} jobs for {len(self._pipes)} writers")
        self._running = self._pipes[: len(jobs)]
        for pipe, job in zip(self._running, jobs, strict=True):
            pipe.send(("prepare", job))
        for pipe in self._running:
            self._receive(pipe, "ready", _READY_TIMEOUT_S)
        start_at = time.time() + lead_s
        for pipe in self._running:
            pipe.send(("run", start_at))
        return start_at

    def results(self, timeout_s: float) -> list[Saved]:
        """Wait up to ``timeout_s`` for each started writer's result."""
        samples = [self._receive(pipe, "done", timeout_s) for pipe in self._running]
        self._running = []
        return [s for s in samples if isinstance(s, Saved)]

    def _receive(self, pipe: Connection, expected: str, timeout_s: float) -> Any:
        if not pipe.poll(timeout_s):
            raise WriterError(f"a benchmark writer did not answer {expected!r} in {timeout_s} s")
        message, payload = pipe.recv()
        if message == "error":
            raise WriterError(f"a benchmark writer failed:\n{payload}")
        if message != expected:
            raise WriterError(f"a benchmark writer answered {message!r}, not {expected!r}")
        return payload

    def close(self) -> None:
        """Stop every writer (each closes its application) and wait for it to exit."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", None))
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for pipe in self._pipes:
            pipe.close()

    def __enter__(self) -> Writers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""Writer processes for the append benchmark.

Each worker process keeps one application per system and, when told, runs writer threads
that create an aggregate with N pending events and ``save()`` it, over and over, until a
deadline. Every worker of a run starts at the same wall-clock instant; saves that complete
during the warm-up are not counted, nor is a save that completes after the window.

Processes are started with ``forkserver`` (see :class:`WorkerPool`): each is forked from a
server that has imported this module, so a new writer costs milliseconds, not an import of
eventsourcing, pydantic and psycopg.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any
from uuid import UUID

from eventsourcing.application import Application

from eventkit.benchmarks.aggregates import OPENERS
from eventkit.benchmarks.systems import build_app
from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.factory import close_pools

#: Seconds a worker may take to construct its application and answer.
_READY_TIMEOUT_S = 120.0


class BenchmarkError(EventkitError):
    """A benchmark worker failed; the message carries its traceback."""


@dataclass(frozen=True)
class Job:
    """What one worker process does in a run: ``threads`` writers saving ``batch`` events."""

    system: str
    env: dict[str, str]
    batch: int
    threads: int
    mode: str
    warmup_s: float
    duration_s: float


@dataclass
class Sample:
    """What one worker measured: each counted save's latency, the events, the CPU time."""

    latencies_s: list[float] = field(default_factory=list)
    events: int = 0
    cpu_s: float = 0.0
    backend_pids: list[int] = field(default_factory=list)


def serve(conn: Connection) -> None:
    """A worker process's loop: answer ``prepare``, ``run`` and ``stop`` messages."""
    apps: dict[str, Application[UUID]] = {}
    job: Job | None = None
    try:
        while True:
            message, payload = conn.recv()
            try:
                if message == "stop":
                    break
                if message == "prepare":
                    job = payload
                    assert isinstance(job, Job)
                    if job.system not in apps:
                        apps[job.system] = build_app(job.system, job.env)
                    conn.send(("ready", None))
                elif message == "run":
                    assert job is not None
                    conn.send(("done", _run(apps[job.system], job, start_at=payload)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        for app in apps.values():
            app.close()
        close_pools()


def _run(app: Application[UUID], job: Job, start_at: float) -> Sample:
    measure_from = start_at + job.warmup_s
    until = measure_from + job.duration_s
    time.sleep(max(0.0, start_at - time.time()))
    with ThreadPoolExecutor(job.threads) as executor:
        futures = [
            executor.submit(_write, app, job.system, job.batch, measure_from, until)
            for _ in range(job.threads)
        ]
        # This thread only sleeps, and reads the process's CPU time as the window opens
        # and closes: the writers' CPU time in the window, eventsourcing's and psycopg's
        # work included.
        time.sleep(max(0.0, measure_from - time.time()))
        cpu_from = time.process_time()
        time.sleep(max(0.0, until - time.time()))
        cpu_s = time.process_time() - cpu_from
        samples = [f.result() for f in futures]
    merged = Sample(cpu_s=cpu_s, backend_pids=_backend_pids(app))
    for sample in samples:
        merged.latencies_s.extend(sample.latencies_s)
        merged.events += sample.events
    return merged


def _write(
    app: Application[UUID], system: str, batch: int, measure_from: float, until: float
) -> Sample:
    """Save new aggregates of ``batch`` events until ``until``, counting from ``measure_from``."""
    open_aggregate = OPENERS[system]
    sample = Sample()
    while True:
        aggregate = open_aggregate(batch)
        started = time.perf_counter()
        app.save(aggregate)
        latency = time.perf_counter() - started
        now = time.time()
        if now >= until:
            return sample
        if now >= measure_from:
            sample.latencies_s.append(latency)
            sample.events += batch


def _backend_pids(app: Application[UUID]) -> list[int]:
    """The server pids of the application's pooled connections (all idle after a run)."""
    factory: Any = app.factory
    pool = getattr(factory, "pool", None)  # eventkit's factory
    if pool is None:  # eventsourcing's
        pool = getattr(getattr(factory, "datastore", None), "pool", None)
    # psycopg_pool has no public list of its connections; its idle ones are in ``_pool``.
    idle = getattr(pool, "_pool", ())
    return [conn.info.backend_pid for conn in idle]


class WorkerPool:
    """``size`` worker processes, each answering on its own pipe."""

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
        self._longest_s = 0.0

    def start(self, jobs: list[Job]) -> float:
        """Give one job to each of the first ``len(jobs)`` workers; return when they start.

        Each worker first constructs its application (once per system) and answers;
        then all are told the same wall-clock start, a moment ahead.
        """
        if not 0 < len(jobs) <= len(self._pipes):
            raise ValueError(f"{len(jobs)} jobs for {len(self._pipes)} workers")
        self._running = self._pipes[: len(jobs)]
        self._longest_s = max(job.warmup_s + job.duration_s for job in jobs)
        for pipe, job in zip(self._running, jobs, strict=True):
            pipe.send(("prepare", job))
        for pipe in self._running:
            self._receive(pipe, "ready", timeout_s=_READY_TIMEOUT_S)
        start_at = time.time() + 0.2
        for pipe in self._running:
            pipe.send(("run", start_at))
        return start_at

    def results(self) -> list[Sample]:
        """Wait for the started workers' samples."""
        timeout_s = self._longest_s + _READY_TIMEOUT_S
        samples = [self._receive(pipe, "done", timeout_s) for pipe in self._running]
        self._running = []
        return [s for s in samples if isinstance(s, Sample)]

    def _receive(self, pipe: Connection, expected: str, timeout_s: float) -> Any:
        if not pipe.poll(timeout_s):
            raise BenchmarkError(f"a benchmark worker did not answer {expected!r} in {timeout_s} s")
        message, payload = pipe.recv()
        if message == "error":
            raise BenchmarkError(f"a benchmark worker failed:\n{payload}")
        if message != expected:
            raise BenchmarkError(f"a benchmark worker answered {message!r}, not {expected!r}")
        return payload

    def close(self) -> None:
        """Stop every worker (each closes its pools) and wait for it to exit."""
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

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

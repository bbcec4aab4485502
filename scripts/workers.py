"""``eventkit workers``: run projection workers until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from infrastructure.errors import ConfigurationError
from infrastructure.factory import shared_pool
from infrastructure.recorder import PostgresEventRecorder
from infrastructure.settings import Settings
from infrastructure.transcoding import PydanticMapper
from projections.projection import Projection
from projections.shop import PROJECTIONS
from projections.worker import BatchReport, ProjectionWorker, RetryPolicy
from scripts.bootstrap import tune_gc

logger = logging.getLogger(__name__)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "workers", help="run projection workers (all by default) until SIGTERM or Ctrl-C"
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(PROJECTIONS)}")
    parser.add_argument("--id", dest="worker_id", help="worker id (default: HOST:PID)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--max-attempts", type=int, default=5, help="tries before parking")
    parser.set_defaults(run=_run)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def select_projections(names: Sequence[str]) -> list[type[Projection]]:
    """The projections named (all when none are), or an error naming the unknown ones."""
    unknown = [n for n in names if n not in PROJECTIONS]
    if unknown:
        raise ConfigurationError(
            f"unknown projection(s) {', '.join(unknown)}; known: {', '.join(PROJECTIONS)}"
        )
    return [PROJECTIONS[n] for n in names] if names else list(PROJECTIONS.values())


def build_workers(
    projections: Sequence[type[Projection]],
    settings: Settings,
    *,
    worker_id: str,
    batch_size: int = 1000,
    retry: RetryPolicy | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> list[ProjectionWorker]:
    """One worker per projection, sharing the process's pool for reading the log."""
    pool, url = shared_pool(settings)
    recorder = PostgresEventRecorder(pool, settings.schema, notify_channel=settings.notify_channel)
    mapper = PydanticMapper()
    return [
        ProjectionWorker(
            p(),
            url=url,
            schema=settings.schema,
            recorder=recorder,
            mapper=mapper,
            worker_id=worker_id,
            batch_size=batch_size,
            retry=retry,
            on_batch=on_batch,
            notify_channel=settings.notify_channel,
        )
        for p in projections
    ]


def run_until(workers: Sequence[ProjectionWorker], stop: threading.Event) -> None:
    """Run each worker in a thread until ``stop`` is set; wait for all to finish."""
    threads = [
        threading.Thread(target=w.run, args=(stop,), name=f"worker-{w.name}", daemon=True)
        for w in workers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _run(args: argparse.Namespace) -> int:
    tune_gc()
    settings = Settings.from_env()
    worker_id = args.worker_id or default_worker_id()
    workers = build_workers(
        select_projections(args.names),
        settings,
        worker_id=worker_id,
        batch_size=args.batch_size,
        retry=RetryPolicy(max_attempts=args.max_attempts),
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s: finishing the current batches", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info(
        "worker %s running %s on schema %s",
        worker_id,
        ", ".join(w.name for w in workers),
        settings.schema,
    )
    run_until(workers, stop)
    logger.info("worker %s stopped", worker_id)
    return 0

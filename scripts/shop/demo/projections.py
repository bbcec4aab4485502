"""Projections and their lag: the workers in threads, the lag while the writers run, the drain.

The shop's projection workers, and the demo's own ``customer_ledger``, run in one thread
beside the writers. The lag of each view (events not yet in it, and the age of the oldest)
is shown now and then, and after the writers stop, until every view has the last event.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from uuid import UUID

import psycopg_pool

from eventkit.cli.progress import Pacer
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.projections.follower import Follower
from eventkit.projections.projection import Projection
from eventkit.projections.status import ConsumerStatus, consumer_status
from eventkit.runner import run_until
from eventkit.shop.demo.deadletters import DEMO_RETRY, CustomerLedger
from eventkit.shop.demo.workload import Tally


class LagMonitor:
    """``eventkit status`` condensed to one line: each projection's lag, now and then."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        schema: str,
        projections: Sequence[type[Projection]],
        tally: Tally,
        orders: int,
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.projections = projections
        self.tally = tally
        self.orders = orders
        self.widths = [max(len(p.name), 14) for p in projections]
        self.orders_width = max(len(f"{orders:,}/{orders:,}"), len("orders"))
        self.started = time.perf_counter()

    def status(self) -> list[ConsumerStatus]:
        return consumer_status(self.pool, self.schema, self.projections)

    def header(self) -> None:
        print("\nprojections: lag = events not yet in each view / age in seconds of the oldest")
        names = zip(self.projections, self.widths, strict=True)
        print(
            f"  {'time':>6}  {'orders':>{self.orders_width}}"
            + "".join(f"  {p.name:>{w}}" for p, w in names)
        )

    def show(self, rows: list[ConsumerStatus], note: str) -> None:
        lags = {r.consumer: f"{r.lag_events:,} / {r.lag_seconds:.1f}" for r in rows}
        cells = "".join(
            f"  {lags.get(p.name, '-'):>{w}}"
            for p, w in zip(self.projections, self.widths, strict=True)
        )
        elapsed = time.perf_counter() - self.started
        orders = f"{self.tally.finished:,}/{self.orders:,}"
        print(f"  {elapsed:>5.1f}s  {orders:>{self.orders_width}}{cells}  {note}")


class _QuietWorkers(logging.Filter):
    """Drops the workers' routine lines and the demo projection's expected failures."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        # The follower's lines start with the consumer's kind and name.
        return record.levelno >= logging.WARNING and CustomerLedger.name not in args[:2]


@contextlib.contextmanager
def quiet_workers(verbose: bool) -> Iterator[None]:
    """Keep the output to what the demo prints itself (all of it with ``--verbose``)."""
    if verbose:
        yield
        return
    worker_logger, quiet = logging.getLogger("eventkit.projections.follower"), _QuietWorkers()
    worker_logger.addFilter(quiet)
    # The reactions' failures and dead letters are the demo's to tell, and dramatiq's
    # start and stop lines are noise here.
    silenced = [
        logging.getLogger(name)
        for name in ("eventkit.projections.reactor", "eventkit.projections.monitoring", "dramatiq")
    ]
    levels = [lg.level for lg in silenced]
    for lg in silenced:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        worker_logger.removeFilter(quiet)
        for lg, level in zip(silenced, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def running(workers: Sequence[Follower]) -> Iterator[None]:
    """Run the workers in threads for the block; then stop them and wait for them."""
    stop = threading.Event()
    runner = threading.Thread(
        target=run_until, args=(workers, stop), name="demo-workers", daemon=True
    )
    runner.start()
    try:
        yield
    finally:
        stop.set()
        started = time.perf_counter()
        runner.join(timeout=30)
        if runner.is_alive():
            print("\nworkers: NOT stopped 30 s after they were asked to")
        else:
            print(
                f"\nworkers stopped {time.perf_counter() - started:.2f} s after they were "
                "asked to, each after committing the batch in hand"
            )


def print_workers(workers: Sequence[Follower], poison: UUID) -> None:
    print(
        f"workers: {', '.join(w.name for w in workers)}, a thread each; a failing event "
        f"is tried {DEMO_RETRY.max_attempts} times, {DEMO_RETRY.first_delay_s} s apart at first"
    )
    print(f"  {CustomerLedger.name} is the demo's own; it fails on purpose for order {poison}")


def drain(monitor: LagMonitor, timeout: float = 30.0) -> bool:
    """Show the lag now and then until every view has the last event; False on timeout.

    The lag counts every committed event of a view's types, readable or not; the demo
    also waits until each view's position has passed the demo's own last event (of any
    type), which followers reach only once no older transaction anywhere on the server
    holds it back from them.
    """
    last = last_position(monitor.pool, monitor.schema)
    deadline = time.monotonic() + timeout
    # A line a second at first; fewer when draining takes long.
    pacer = Pacer(1.0, 5.0, 5, at_once=True)
    while True:
        rows = monitor.status()
        is_lag_zero = all(r.lag_events == 0 for r in rows)
        drained = is_lag_zero and all(Position.parse(r.position) >= last for r in rows)
        if pacer.is_due() or drained:
            note = "draining"
            if drained:
                note = "drained: every view has the last event"
            elif is_lag_zero:
                note = "waiting for the last event: an older transaction is open on the server"
            monitor.show(rows, note)
        if drained:
            return True
        if time.monotonic() > deadline:
            print(f"  the views did NOT reach the last event ({last}) within {timeout:.0f} s")
            return False
        time.sleep(0.05)


def last_position(pool: psycopg_pool.ConnectionPool, schema: str) -> Position:
    """The log position of the last event committed so far, whether followers may read it
    yet or not."""
    return PostgresEventRecorder(pool, schema).last_recorded() or Position.ORIGIN

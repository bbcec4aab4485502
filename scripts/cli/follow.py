"""``--follow`` on ``eventkit reset`` and ``eventkit reactions replay``: after a move, show
the running workers catching up, until the consumer's lag is 0 or Ctrl-C.

The total is the consumer's lag in events over all its partitions right after the move,
counted the way ``eventkit status`` counts it; done is the total minus the lag now. It
never starts workers: it only watches those that run (``eventkit workers``, or a
service's ``eventkit.Workers``), and says so when none runs the consumer.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import psycopg
import psycopg_pool

from eventkit.cli.progress import Completion, Pacer, progress_bar
from eventkit.projections.projection import Consumer
from eventkit.projections.status import members, partition_status

#: How often the lag is read again.
POLL_S = 0.5


def lag(conn: psycopg.Connection[Any], schema: str, consumer: type[Consumer]) -> int:
    """``consumer``'s lag in events, every partition (as ``eventkit status`` counts it)."""
    return sum(r.lag_events for r in partition_status(conn, schema, consumer).rows)


def _worked_on(conn: psycopg.Connection[Any], schema: str, name: str) -> bool:
    """Whether a live worker of the group runs consumer ``name``."""
    return any(m.alive and name in m.consumers for m in members(conn, schema))


def follow(pool: psycopg_pool.ConnectionPool, schema: str, consumer: type[Consumer]) -> int:
    """Show ``consumer`` catching up from its lag now; 0 once caught up, 130 on Ctrl-C
    (the workers go on). Each look is a short transaction of its own: none stays open
    while the workers run."""
    with pool.connection() as conn:
        total = lag(conn, schema, consumer)
        working = _worked_on(conn, schema, consumer.name)
    label = f"catch-up {consumer.name}"
    started = time.monotonic()
    pacer = Pacer(2.0, 10.0, 10) if not sys.stdout.isatty() else None
    said_idle = False
    now = total
    try:
        with progress_bar(label, total, "events") as advance:
            while now > 0:
                if not working and not said_idle:
                    print(
                        f"eventkit: no live worker runs {consumer.name}: waiting for one "
                        f"(start it with eventkit workers {consumer.name})",
                        file=sys.stderr,
                        flush=True,
                    )
                said_idle = not working
                done = max(0, total - now)
                advance(done)
                if pacer is not None and pacer.is_due():
                    completion = Completion(done, total, time.monotonic() - started)
                    print(
                        f"{label}: {done:,}/{total:,} events, {completion.describe('events')}",
                        flush=True,
                    )
                time.sleep(POLL_S)
                with pool.connection() as conn:
                    now = lag(conn, schema, consumer)
                    working = _worked_on(conn, schema, consumer.name)
    except KeyboardInterrupt:
        print(
            f"eventkit: stopped following {consumer.name} at a lag of {now:,} event(s); "
            "its workers go on",
            file=sys.stderr,
        )
        return 130
    seconds = time.monotonic() - started
    rate = total / seconds if seconds else 0.0
    print(
        f"caught up: {consumer.name} processed {total:,} events in {seconds:.1f} s "
        f"({rate:,.0f} events/s)"
    )
    return 0

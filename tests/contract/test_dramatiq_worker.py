"""What eventkit's reaction runtime takes from dramatiq's ``Worker`` beyond its documented
API (``projections/reactor.py``, ``QUEUE_PREFETCH_PER_THREAD``): the ``queue_prefetch``
attribute, set before ``start``, is the prefetch of the queue's consumer."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker


def test_queue_prefetch_set_before_start_is_the_consumers_prefetch() -> None:
    broker = StubBroker()
    broker.declare_queue("reactions")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    assert worker.queue_prefetch == 4  # dramatiq's default: 2 per thread
    worker.queue_prefetch = 8
    worker.start()
    try:
        assert worker.consumers["reactions"].prefetch == 8
    finally:
        worker.stop()
        broker.close()

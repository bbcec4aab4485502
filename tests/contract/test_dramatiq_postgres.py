"""What eventkit's PostgreSQL broker takes from dramatiq-postgres 1.4 beyond its documented
API (``infrastructure/broker.py``, ``_postgres_broker_class``): these fail when a release
changes it, before a worker would misbehave.

eventkit's consumer claims with a statement of its own (returning each message's claim
look: one round trip per message less, see ``look_on_claim``) and hands messages out with
a ``__next__`` of its own (no socket check per message). Both lean on the consumer's
attributes and on the queue's states as dramatiq-postgres's maintenance reads them: a
claimed message must look to its reaper exactly as one its own claim took.
"""

from __future__ import annotations

import re
import threading
from types import SimpleNamespace

from dramatiq_postgres.broker import QUERIES, PostgresBroker, PostgresConsumer


def _normal(query: str) -> str:
    return re.sub(r"\s+", " ", query).strip()


def test_a_consumer_keeps_the_state_eventkits_consumer_reads_and_writes() -> None:
    consumer = PostgresConsumer(
        broker=SimpleNamespace(pool=None, notifier=None),
        queue_name="q",
        prefetch=16,
        timeout=30000,
    )
    assert consumer.buffer == []
    assert consumer.in_processing == set()
    assert consumer.prefetch == 16
    assert consumer.timeout_s == 30.0
    assert isinstance(consumer.wakeup, threading.Event)
    assert consumer._consume_conn is None
    assert consumer.queue_name == "q"


def test_a_broker_keeps_the_upkeep_eventkits_consumer_calls() -> None:
    broker = PostgresBroker(pool=object(), results=False, listen=False, poll_interval=0.2)
    assert broker.poll_interval == 0.2
    assert isinstance(broker.worker_id, str)
    assert callable(broker.maybe_heartbeat)
    assert callable(broker.maybe_maintenance)


def test_its_claim_marks_messages_as_eventkits_claim_does() -> None:
    """eventkit's claim (``_CLAIM``) takes and marks messages as this one does; the reaper
    queues again the consumed messages of workers whose heartbeat is stale."""
    claim = _normal(QUERIES.queries["CLAIM"])
    assert "\"state\" = 'queued' AND available_at <= NOW() ORDER BY available_at, position" in claim
    assert "FOR UPDATE SKIP LOCKED" in claim
    assert "SET \"state\" = 'consumed', worker_id = %s, consumed_at = NOW(), mtime = NOW()" in claim
    reap = _normal(QUERIES.queries["REAP"])
    assert "SET \"state\" = 'queued', worker_id = NULL, consumed_at = NULL" in reap
    assert "WHERE q.\"state\" = 'consumed' AND (q.worker_id IS NULL OR NOT EXISTS" in reap

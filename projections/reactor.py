"""The reaction runtime: followers that record messages, and actors that execute them.

For each reaction, a **follower** (a :class:`~projections.follower.Follower` under the
reaction's name, with its lease and its compare-and-set position) reads the events the
reaction handles and its :class:`HandoverApplier` writes one message per event into the
broker's queue table (or the outbox), in the transaction that records its position. A
crash at any point loses no message and writes none twice: both commit or neither does.

A dramatiq **actor** per reaction executes the messages (:mod:`projections.executor`): it
runs the handler outside any transaction and records the message in the idempotency ledger
with the handler's database writes, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import dramatiq
import psycopg
import psycopg_pool
from eventsourcing.persistence import Mapper
from psycopg import sql

from eventkit.infrastructure.broker import (
    BrokerKind,
    BrokerOptions,
    Handover,
    OutboxRelay,
    broker_kind,
    create_broker,
    look_on_claim,
    message_for,
    queue_name,
    reaction_message,
)
from eventkit.infrastructure.deadletters import DeadLetter, DeadLetters, Selector
from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.factory import mapper_for, read_recorder, shared_pool
from eventkit.infrastructure.log import LoggedNotification
from eventkit.infrastructure.partitions import Partition
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.projections.executor import ReactionExecutor, declare_actor
from eventkit.projections.follower import Follower, FollowerOptions, PollPolicy
from eventkit.projections.group import Runnable
from eventkit.projections.projection import Consumer, Context
from eventkit.projections.reaction import Reaction, trace_reactions

logger = logging.getLogger(__name__)


#: Messages a worker process's consumer holds per worker thread (claimed, queued for the
#: threads, or running): dramatiq's default is 2. Each claim is a round trip whose cost
#: the messages it takes share, and with 2 a claim took ~6 messages on average: in
#: alternating runs of the throughput bench's setup in one process (10,000 messages, 8
#: threads) the process used 518 and 558 us of CPU per message with 2, 444 and 483 with
#: 4, 465 and 518 with 8. A process that dies leaves what it held to the broker's
#: maintenance (queued again once its heartbeat is ``heartbeat_ttl_s`` old), as before,
#: however many. Set through ``Worker.queue_prefetch``, read by ``Worker.start`` (dramatiq
#: documents only the ``dramatiq_queue_prefetch`` environment variable, read at its
#: import): ``tests/contract/test_dramatiq_worker.py`` fails if that attribute stops
#: setting the consumers' prefetch, and then dramatiq's default applies, which works as
#: before.
QUEUE_PREFETCH_PER_THREAD = 4


# -- the follower ------------------------------------------------------------------------------


class HandoverApplier:
    """A reaction's follower's applier: one message per event, written through the broker's
    hand-over in the batch's transaction (into dramatiq-postgres's queue table, or the
    outbox a relay publishes from). The event is not decoded: the message carries its
    stream, version and position, and the reaction's actor loads it."""

    kind = "reaction"
    #: Reactions' messages run unordered (several actor threads), so a dead letter holds
    #: up nothing; it names its message, which ``eventkit dlq retry`` queues again.
    sequenced = False
    #: A reaction's latency ends when its actor runs the message (the executor measures).
    observes_latency = False

    def __init__(self, reaction: type[Reaction], schema: str, handover: Handover) -> None:
        self.consumer: type[Consumer] = reaction
        self.schema = schema
        self.handover = handover
        #: The statement's ``{target}``: the queue table or the outbox.
        self.tables = {"target": handover.target}
        self._statement = handover.statement

    def prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Nothing to create: the queue and the outbox come with eventkit's schema (the
        reaction's own tables are its executor's)."""

    def decode(self, notification: LoggedNotification) -> object:
        return notification

    def apply(self, event: object, context: Context) -> None:
        message = reaction_message(self.schema, self.consumer.name, context.notification)
        context.execute(self._statement, self.handover.params(message))


# -- operators' retries of dead letters --------------------------------------------------------


def requeue_dead_letters(
    conn: psycopg.Connection[Any], schema: str, handover: Handover, selector: Selector
) -> list[DeadLetter]:
    """Queue the selected parked reaction messages again, with a fresh count of tries, and
    mark their dead letters retried, in one transaction. Returns the letters."""
    dead_letters = DeadLetters(schema)
    with conn.transaction():
        letters = dead_letters.parked_messages(conn, selector, lock=True)
        messages = [
            message_for(
                schema,
                d.consumer,
                stream=d.originator_id,
                version=d.originator_version,
                notification_id=d.notification_id,
                transaction_id=d.transaction_id,
            )
            for d in letters
        ]
        handover.requeue(conn, messages)
        dead_letters.mark(conn, [d.dead_letter_id for d in letters], "retried")
    return letters


def executed(conn: psycopg.Connection[Any], schema: str, message_ids: Sequence[UUID]) -> set[UUID]:
    """Which of ``message_ids`` the idempotency ledger holds."""
    rows = conn.execute(
        sql.SQL("SELECT message_id FROM {} WHERE message_id = ANY(%s)").format(
            sql.Identifier(schema, "reaction_ledger")
        ),
        (list(message_ids),),
    ).fetchall()
    return {r[0] for r in rows}


# -- running everything in one process ---------------------------------------------------------


class ReactionRuntime:
    """The followers, the dramatiq worker and (with RabbitMQ or Redis) the outbox relay
    of a set of reactions, in one process."""

    def __init__(
        self,
        reactions: Sequence[Reaction],
        *,
        broker: dramatiq.Broker,
        kind: BrokerKind,
        url: str,
        schema: str,
        pool: psycopg_pool.ConnectionPool,
        recorder: PostgresEventRecorder,
        mapper: Mapper[UUID],
        worker_id: str,
        worker_threads: int = 8,
        batch_size: int = 1000,
        poll: PollPolicy | None = None,
        notify_channel: str | None = None,
        follow: bool = True,
        relay_threads: int = 4,
        lease_ttl_s: float = 5.0,
        durable_commits: bool = False,
        reader: PostgresEventRecorder | None = None,
    ) -> None:
        """``reader``: where the followers read the log (a replica's recorder), when not
        through ``recorder``."""
        names = [r.name for r in reactions]
        if len(set(names)) != len(names):
            raise EventkitError(f"two reactions share a name: {names}")
        self.broker = broker
        self.kind = kind
        self.url = url
        self.schema = schema
        self.worker_threads = worker_threads
        self.relay_threads = relay_threads
        handover = Handover(kind, schema)
        queue_table = handover.target if kind is BrokerKind.POSTGRES else None
        self.executors = {
            r.name: ReactionExecutor(
                r,
                pool=pool,
                schema=schema,
                recorder=recorder,
                mapper=mapper,
                queue_table=queue_table,
                durable_commits=durable_commits,
            )
            for r in reactions
        }
        for executor in self.executors.values():
            declare_actor(broker, schema, executor)
            if queue_table is not None:
                look_on_claim(broker, queue_name(schema, executor.name), executor.claim_look())

        options = FollowerOptions(
            url=url,
            recorder=recorder,
            worker_id=worker_id,
            batch_size=batch_size,
            poll=poll or PollPolicy(),
            lease_ttl_s=lease_ttl_s,
            notify_channel=notify_channel,
            reader=reader,
        )

        def maker(reaction: type[Reaction]) -> Callable[[int, int], Follower]:
            applier = HandoverApplier(reaction, schema, handover)

            def make(partition: int, partitions: int) -> Follower:
                key = Partition(reaction.partition_key, partitions, partition)
                return Follower(reaction.name, applier, key, options)

            return make

        #: The followers as a :class:`WorkerGroup` runs them, partitioned.
        self.consumers = [Runnable(r.name, type(r), maker(type(r))) for r in reactions]
        #: Followers this runtime runs itself, one partition each (``follow=True``).
        self.followers = [maker(type(r))(0, 1) for r in reactions] if follow else []
        self.relay = (
            None
            if kind is BrokerKind.POSTGRES
            else OutboxRelay(broker, database_url=url, schema=schema)
        )
        self.pool = pool
        #: The dramatiq worker of the last :meth:`run` (None before the first).
        self.worker: dramatiq.Worker | None = None

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; then finish the batches and messages in hand."""
        with self.pool.connection() as conn:
            for executor in self.executors.values():
                executor.create_tables(conn)
        worker = dramatiq.Worker(self.broker, worker_threads=self.worker_threads)
        worker.queue_prefetch = QUEUE_PREFETCH_PER_THREAD * self.worker_threads
        worker.start()
        self.worker = worker
        threads = [
            threading.Thread(target=f.run, args=(stop,), name=f"follower-{f.name}", daemon=True)
            for f in self.followers
        ]
        if self.relay is not None:
            # Several relay threads: each publish waits for the broker's confirmation, and
            # rows are taken with SKIP LOCKED, so the threads share the outbox.
            threads += [
                threading.Thread(
                    target=self.relay.run, args=(stop,), name=f"relay-{i}", daemon=True
                )
                for i in range(self.relay_threads)
            ]
        for t in threads:
            t.start()
        try:
            stop.wait()
        finally:
            for t in threads:
                t.join()
            worker.stop()
            self.broker.close()


def reaction_runtime(
    reactions: Sequence[Reaction],
    settings: Settings,
    *,
    worker_id: str,
    broker_options: BrokerOptions | None = None,
    worker_threads: int = 8,
    batch_size: int = 1000,
    poll: PollPolicy | None = None,
    follow: bool = True,
    durable_commits: bool = False,
) -> ReactionRuntime:
    """A runtime for ``reactions`` on the settings' database and schema, with the broker
    ``BROKER_URL`` names (the PostgreSQL broker when unset)."""
    pool, url = shared_pool(settings)
    if settings.tracing:
        trace_reactions(reactions)
    kind = broker_kind(settings.broker_url)
    broker = create_broker(
        kind,
        database_url=url,
        schema=settings.schema,
        broker_url=settings.broker_url,
        options=broker_options,
        queues=len(reactions),
    )
    return ReactionRuntime(
        reactions,
        broker=broker,
        kind=kind,
        url=url,
        schema=settings.schema,
        pool=pool,
        recorder=PostgresEventRecorder(pool, settings.schema),
        mapper=mapper_for(pool, settings.schema, settings),
        worker_id=worker_id,
        worker_threads=worker_threads,
        batch_size=batch_size,
        poll=poll,
        notify_channel=settings.notify_channel,
        follow=follow,
        durable_commits=durable_commits,
        reader=read_recorder(settings),
    )

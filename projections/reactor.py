"""The reaction runtime: followers that record messages, and actors that execute them.

For each reaction, a **follower** (a :class:`~projections.follower.Follower` under the
reaction's name, with its lease and its compare-and-set position) reads the events the
reaction handles and its :class:`HandoverApplier` writes one message per event into the
broker's queue table (or the outbox), in the transaction that records its position. A
crash at any point loses no message and writes none twice: both commit or neither does.

A dramatiq **actor** per reaction executes the messages: it loads the event named by the
message, records the message in the idempotency ledger and runs the handler in one
transaction (a message already in the ledger is acknowledged and skipped), and on failure
lets dramatiq try again with the reaction's backoff. After the last try it parks the
message as a dead letter; if even that fails (the database is down) the message stays with
the broker and is tried again later: nothing is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import dramatiq
import psycopg
import psycopg_pool
from dramatiq.middleware import CurrentMessage
from eventsourcing.persistence import Mapper
from psycopg import pq, sql
from psycopg.adapt import Transformer

from eventkit.infrastructure import libpq, metrics
from eventkit.infrastructure.broker import (
    BrokerKind,
    BrokerOptions,
    Handover,
    OutboxRelay,
    actor_name,
    broker_kind,
    create_broker,
    message_for,
    queue_name,
    reaction_message,
)
from eventkit.infrastructure.deadletters import DeadLetter, DeadLetters, Selector
from eventkit.infrastructure.errors import EventDecodingError, EventkitError
from eventkit.infrastructure.factory import mapper_for, shared_pool
from eventkit.infrastructure.log import LoggedNotification
from eventkit.infrastructure.partitions import Partition
from eventkit.infrastructure.recorder import PostgresEventRecorder, logged_notification
from eventkit.infrastructure.settings import Settings
from eventkit.projections.follower import Follower, FollowerOptions, PollPolicy
from eventkit.projections.group import Runnable
from eventkit.projections.projection import Consumer, Context, create_tables, table_identifiers
from eventkit.projections.reaction import Reaction, ReactionContext, trace_reactions

logger = logging.getLogger(__name__)


#: The first statement's parameters: message id (acknowledgement), message id, reaction,
#: notification id, attempt, notification id (the event to load).
_BEGIN_TYPES = (
    libpq.UUID_OID,
    libpq.UUID_OID,
    libpq.TEXT_OID,
    libpq.INT8_OID,
    libpq.INT4_OID,
    libpq.INT8_OID,
)
_OPEN = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)

#: Turns synchronous_commit off for the rest of the current transaction only.
_ASYNC_COMMIT = "SELECT set_config('synchronous_commit', 'off', true)"


class MissingEventError(EventkitError):
    """A reaction message names an event the store does not hold."""


class HandlerSwallowedError(EventkitError):
    """A reaction's handler returned after one of its statements failed."""


class _Unrunnable(Exception):
    """A message that no try can run (its event is missing or cannot be decoded)."""

    def __init__(self, notification: LoggedNotification, error: Exception, reason: str) -> None:
        super().__init__(str(error))
        self.notification = notification
        self.error = error
        self.reason = reason


def _missing(
    stream: UUID, version: int, notification_id: int, transaction_id: int
) -> LoggedNotification:
    """A stand-in for an event the store does not hold, to park its message with."""
    return LoggedNotification(
        id=notification_id,
        originator_id=stream,
        originator_version=version,
        topic="(missing)",
        state=b"",
        transaction_id=transaction_id,
        recorded_at=datetime.now(UTC),
    )


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


# -- the actor ---------------------------------------------------------------------------------


@dataclass
class ExecutorCounts:
    """What one reaction's actor did in this process."""

    executed: int = 0
    duplicates: int = 0
    failures: int = 0
    parked: int = 0


class ReactionExecutor:
    """Executes one reaction's messages: the body of its dramatiq actor."""

    def __init__(
        self,
        reaction: Reaction,
        *,
        pool: psycopg_pool.ConnectionPool,
        schema: str,
        recorder: PostgresEventRecorder,
        mapper: Mapper[UUID],
        queue_table: sql.Identifier | None = None,
        durable_commits: bool = False,
    ) -> None:
        """``queue_table``: the PostgreSQL broker's queue; its row of a message is deleted
        in the transaction that executes or parks the message (the broker's own
        acknowledgement is then a no-op).

        ``durable_commits=False`` (the default) lets a message's transaction commit without
        waiting for the disk (``synchronous_commit`` off for that transaction only). A
        server crash can then lose the last executions whole: their ledger rows, their
        effects through the context's connection and their acknowledgements together. The
        broker hands those messages out again and they run again, which at-least-once
        delivery allows (an external call sees the same idempotency key again); an effect
        through the ledger still happens exactly once. The reaction workers' server CPU
        fell by ~15-20% in bench reactions."""
        self.reaction = reaction
        self.name = reaction.name
        self.pool = pool
        self.schema = schema
        self.recorder = recorder
        self.mapper = mapper
        self.dead_letters = DeadLetters(schema)
        self.tables = table_identifiers(schema, type(reaction))
        self.counts = ExecutorCounts()
        self._m_executed = metrics.REACTION_MESSAGES.labels(self.name, "executed")
        self._m_duplicate = metrics.REACTION_MESSAGES.labels(self.name, "duplicate")
        self._m_retried = metrics.REACTION_MESSAGES.labels(self.name, "retried")
        self._m_latency = metrics.PROCESSED_LATENCY.labels("reaction", self.name)
        self._lock = threading.Lock()
        self._handlers: dict[type[Any], Callable[[Any, Any, Any], None]] = {}
        self._ack = (
            None
            if queue_table is None
            else sql.SQL("DELETE FROM {} WHERE message_id = %s AND state = 'consumed'").format(
                queue_table
            )
        )
        # One statement: acknowledge (PostgreSQL broker), record in the ledger, load the
        # event. Whether the ledger took the message, then the event's columns (NULL when
        # the store does not hold it).
        self._begin_sql = sql.SQL(
            "WITH acked AS ({ack}), claimed AS (INSERT INTO {ledger} (message_id, reaction,"
            " notification_id, attempt) VALUES (%s, %s, %s, %s) ON CONFLICT (message_id)"
            " DO NOTHING RETURNING 1)"
            " SELECT EXISTS (SELECT 1 FROM claimed), e.* FROM ({one}) one"
            " LEFT JOIN ({load}) e ON true"
        ).format(
            one=sql.SQL("SELECT 1" if durable_commits else _ASYNC_COMMIT),
            ack=sql.SQL("SELECT 1 WHERE %s IS NULL") if self._ack is None else self._ack,
            ledger=sql.Identifier(schema, "reaction_ledger"),
            load=recorder.notification_query(),
        )
        #: The first statement, prepared, and the reaction's name as an SQL literal:
        #: built on the first message (both need a connection).
        self._begin: tuple[libpq.PreparedStatement, str] | None = None

    def create_tables(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            create_tables(conn, self.schema, type(self.reaction))

    def __call__(
        self, stream: str, version: int, notification_id: int, transaction_id: int
    ) -> None:
        message = CurrentMessage.get_current_message()
        if message is None:
            raise EventkitError(
                f"reaction {self.name!r}: no current message; add dramatiq's CurrentMessage "
                "middleware to the broker"
            )
        self.execute(
            UUID(message.message_id),
            int(message.options.get("retries", 0)) + 1,
            stream=UUID(stream),
            version=version,
            notification_id=notification_id,
            transaction_id=transaction_id,
        )

    def execute(
        self,
        message_id: UUID,
        attempt: int,
        *,
        stream: UUID,
        version: int,
        notification_id: int,
        transaction_id: int,
    ) -> None:
        """Run the reaction for one message, or raise to have dramatiq try it again.

        One transaction whose first statement, with the PostgreSQL broker, deletes the
        message from the queue (the acknowledgement), records the message in the ledger
        and loads the event; then the handler runs. A repeat of an executed message only
        deletes it. A failure rolls all of it back, so the message stays with
        the broker for its next try.
        """
        try:
            with self._transaction() as conn:
                row = self._start(conn, message_id, notification_id, attempt)
                if not row[0]:
                    self._m_duplicate.inc()
                    with self._lock:
                        self.counts.duplicates += 1
                    logger.info(
                        "reaction %s: message %s (stream %s version %s) already executed; skipped",
                        self.name,
                        message_id,
                        stream,
                        version,
                    )
                    return
                if row[1] is None:
                    raise _Unrunnable(
                        _missing(stream, version, notification_id, transaction_id),
                        MissingEventError(
                            f"reaction {self.name!r}: message {message_id} names stream "
                            f"{stream} version {version} (position {transaction_id}/"
                            f"{notification_id}), which the store does not hold"
                        ),
                        "failed",
                    )
                row = row[1:]
                n = logged_notification(row)
                try:
                    event = self.mapper.to_domain_event(n)
                except EventDecodingError as e:
                    raise _Unrunnable(n, e, "undecodable") from e
                handler = self._handler(type(event))
                context = ReactionContext(
                    conn,
                    self.tables,
                    n,
                    reaction=self.name,
                    message_id=message_id,
                    attempt=attempt,
                )
                handler(self.reaction, event, context)
        except _Unrunnable as bad:
            # Never runnable: parked at once, whatever the try.
            self._park(
                bad.notification,
                message_id=message_id,
                attempt=attempt,
                reason=bad.reason,
                error=bad.error,
            )
            return
        except psycopg.OperationalError as error:
            # The database connection, not the reaction: not a try. The message is tried
            # again after a backoff, as often as it takes for the database to come back.
            metrics.ERRORS.labels("reaction", self.name, type(error).__name__).inc()
            logger.warning(
                "reaction %s: database connection lost while running message %s (stream %s "
                "version %s): %s; trying again (not counted as a try)",
                self.name,
                message_id,
                stream,
                version,
                error,
            )
            raise dramatiq.Retry(
                f"database connection lost: {error}", delay=self._uncount_try()
            ) from error
        except Exception as error:
            with self._lock:
                self.counts.failures += 1
            metrics.ERRORS.labels("reaction", self.name, type(error).__name__).inc()
            if attempt < type(self.reaction).max_attempts:
                self._m_retried.inc()
                metrics.RETRIES.labels("reaction", self.name).inc()
                logger.warning(
                    "reaction %s failed on stream %s version %s (position %s/%s, message %s, "
                    "attempt %d of %d): %s: %s; trying again",
                    self.name,
                    stream,
                    version,
                    transaction_id,
                    notification_id,
                    message_id,
                    attempt,
                    type(self.reaction).max_attempts,
                    type(error).__name__,
                    error,
                    extra={
                        "consumer": self.name,
                        "kind": "reaction",
                        "position": f"{transaction_id}/{notification_id}",
                        "stream": str(stream),
                        "version": version,
                        "message_id": str(message_id),
                    },
                )
                # Retry, not the error itself: dramatiq logs any other exception with its
                # traceback at ERROR on every try; the line above says what happened.
                raise dramatiq.Retry(f"{type(error).__name__}: {error}") from error
            n = self._notification(stream, version, notification_id, transaction_id)
            self._park(
                n,
                message_id=message_id,
                attempt=attempt,
                reason="failed",
                error=error,
                tb=traceback.format_exc(),
            )
            return
        with self._lock:
            self.counts.executed += 1
        self._m_executed.inc()
        self._m_latency.observe(time.time() - n.recorded_at.timestamp())

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one message's transaction, which :meth:`_start` begins:
        committed when the block ends, rolled back when it raises.

        BEGIN, COMMIT and the first statement go through libpq
        (:mod:`infrastructure.libpq`): through psycopg's cursor and ``transaction()``
        those three round trips took ~200 us of the worker process's CPU per message,
        and one process's CPU is what limits a reaction worker. The handler's own
        statements go through psycopg as before (a ``transaction()`` of its own is a
        savepoint).
        """
        conn = self.pool.getconn()
        try:
            try:
                yield conn
            except BaseException:
                if conn.pgconn.transaction_status in _OPEN:
                    with contextlib.suppress(psycopg.Error):  # the connection is gone
                        libpq.command(conn, b"ROLLBACK")
                raise
            status = conn.pgconn.transaction_status
            if status == pq.TransactionStatus.INERROR:
                # A statement failed and the handler went on: PostgreSQL would answer
                # COMMIT with a silent rollback. Say so, and let the message be tried again.
                libpq.command(conn, b"ROLLBACK")
                raise HandlerSwallowedError(
                    f"reaction {self.name!r}: a database statement of the handler failed "
                    "and the handler returned normally; nothing of the message was committed"
                )
            if status != pq.TransactionStatus.IDLE:
                libpq.command(conn, b"COMMIT")
        finally:
            self.pool.putconn(conn)

    def _start(
        self, conn: psycopg.Connection[Any], message_id: UUID, notification_id: int, attempt: int
    ) -> tuple[Any, ...]:
        """BEGIN and the first statement, in one round trip: whether the ledger took the
        message, then the event's columns (NULL when the store does not hold it)."""
        if self._begin is None:
            statement = libpq.PreparedStatement(
                libpq.numbered(self._begin_sql.as_string(conn)), _BEGIN_TYPES
            )
            self._begin = statement, libpq.literal(conn, self.name)
        statement, name = self._begin
        m = f"'{message_id}'"
        result = statement.begin_and_run(
            conn, f"{m}, {m}, {name}, {notification_id:d}, {attempt:d}, {notification_id:d}"
        )
        transformer = Transformer.from_context(conn)
        transformer.set_pgresult(result)
        row: tuple[Any, ...] = transformer.load_row(0, tuple)
        return row

    def _uncount_try(self) -> int:
        """Undo the try dramatiq's Retries is about to count for the current message, and
        return the delay before the next one (ms): the reaction's backoff, doubling with
        each lost connection in a row (counted apart, in the message's options)."""
        r = type(self.reaction)
        message = CurrentMessage.get_current_message()
        lost = 1
        if message is not None:
            message.options["retries"] = int(message.options.get("retries", 0)) - 1
            lost = int(message.options.get("eventkit_connection_losses", 0)) + 1
            message.options["eventkit_connection_losses"] = lost
        ceiling = min(r.max_backoff_ms, r.min_backoff_ms * 2 ** min(lost, 20))
        return int(random.uniform(ceiling / 2, ceiling))

    def _notification(
        self, stream: UUID, version: int, notification_id: int, transaction_id: int
    ) -> LoggedNotification:
        found = self.recorder.notifications([notification_id])
        return found[0] if found else _missing(stream, version, notification_id, transaction_id)

    def _handler(self, event_type: type[Any]) -> Callable[[Any, Any, Any], None]:
        handler = self._handlers.get(event_type)
        if handler is None:
            handler = self._handlers[event_type] = type(self.reaction).handler(event_type)
        return handler

    def _park(
        self,
        n: LoggedNotification,
        *,
        message_id: UUID,
        attempt: int,
        reason: str,
        error: BaseException,
        tb: str | None = None,
    ) -> None:
        """Park the message as a dead letter; if that fails, raise so the broker keeps it."""
        with self.pool.connection() as conn, conn.transaction():
            if self._ack is not None:
                conn.execute(self._ack, (message_id,))
            dead_letter_id = self.dead_letters.park(
                conn,
                self.name,
                n,
                reason=reason,
                attempts=attempt,
                error=error,
                traceback=tb or "".join(traceback.format_exception(error)),
                message_id=message_id,
            )
        with self._lock:
            self.counts.parked += 1
        metrics.REACTION_MESSAGES.labels(self.name, "parked").inc()
        metrics.DEAD_LETTERS_PARKED.labels("reaction", self.name, reason).inc()
        logger.error(
            "reaction %s parked message %s (stream %s version %s, position %s, %s) as dead "
            "letter #%s after %d attempt(s): %s: %s",
            self.name,
            message_id,
            n.originator_id,
            n.originator_version,
            n.position,
            n.topic,
            dead_letter_id,
            attempt,
            type(error).__name__,
            error,
            extra={
                "consumer": self.name,
                "kind": "reaction",
                "position": str(n.position),
                "stream": str(n.originator_id),
                "version": n.originator_version,
                "message_id": str(message_id),
            },
        )


def declare_actor(broker: dramatiq.Broker, schema: str, executor: ReactionExecutor) -> Any:
    """Register ``executor`` as the dramatiq actor of its reaction on ``broker``.

    dramatiq's own retry limit is off (``max_retries=None``): the executor counts tries and
    parks the message after the reaction's last one, so a message is never dropped by the
    broker. Backoff (exponential, with jitter) is dramatiq's, with the reaction's bounds.
    """
    r = type(executor.reaction)
    return dramatiq.actor(
        broker=broker,
        actor_name=actor_name(schema, r.name),
        queue_name=queue_name(schema, r.name),
        max_retries=None,
        min_backoff=r.min_backoff_ms,
        max_backoff=r.max_backoff_ms,
        time_limit=r.time_limit_ms,
    )(executor)


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
    ) -> None:
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

        options = FollowerOptions(
            url=url,
            recorder=recorder,
            worker_id=worker_id,
            batch_size=batch_size,
            poll=poll or PollPolicy(),
            lease_ttl_s=lease_ttl_s,
            notify_channel=notify_channel,
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

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; then finish the batches and messages in hand."""
        with self.pool.connection() as conn:
            for executor in self.executors.values():
                executor.create_tables(conn)
        worker = dramatiq.Worker(self.broker, worker_threads=self.worker_threads)
        worker.start()
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
    )

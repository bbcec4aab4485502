"""Reaction messages and the dramatiq broker that carries them.

A reaction message names one (reaction, event) pair. Its id is a UUID5 of the reaction's
name and the event's stream and version, so every follower run, replay and redelivery of
that pair carries the same id, and the idempotency ledger can recognise it. The message
carries the event's stream, version and position, not its body: the actor loads the event.

The follower hands messages over without a second write that could be lost:

- with the PostgreSQL broker (the default), it inserts them straight into the broker's
  queue table (``dramatiq_queue``, dramatiq-postgres 1.4's layout, created by eventkit's
  migrations) in the transaction that records its position;
- with RabbitMQ or Redis (``BROKER_URL``), it inserts them into ``reaction_outbox`` in that
  transaction, and an :class:`OutboxRelay` publishes each row and deletes it afterwards.
  RabbitMQ publishes wait for the broker's confirmation (dramatiq's ``confirm_delivery``,
  off by default, is turned on). A crash between publish and delete publishes the row again
  with the same id; the ledger absorbs the duplicate.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, LiteralString
from urllib.parse import urlparse
from uuid import UUID, uuid5

import dramatiq
import dramatiq.errors
import psycopg
import pydantic_core
from dramatiq.broker import MessageProxy
from dramatiq.middleware import CurrentMessage, Middleware, Retries
from psycopg import sql
from psycopg.types.json import Jsonb

from eventkit.infrastructure.errors import ConfigurationError
from eventkit.infrastructure.log import LoggedNotification
from eventkit.infrastructure.settings import redact

logger = logging.getLogger(__name__)

#: The namespace of reaction message ids (a UUID5 of the reaction and the event).
MESSAGE_NAMESPACE = UUID("0b8a5f3e-7c1d-4d2e-9f60-5e3c2a1b9d47")
#: dramatiq-postgres's table prefix inside eventkit's schema.
DRAMATIQ_PREFIX = "dramatiq_"


def message_id(reaction: str, originator_id: UUID, originator_version: int) -> UUID:
    """The id of ``reaction``'s message for the event at ``originator_version`` of a stream."""
    return uuid5(MESSAGE_NAMESPACE, f"{reaction}/{originator_id}/{originator_version}")


@functools.cache
def queue_name(schema: str, reaction: str) -> str:
    """The dramatiq queue of one reaction in one schema.

    ``SCHEMA.REACTION`` when short enough: the PostgreSQL broker notifies on a channel
    named after the queue (``dramatiq.QUEUE.DQ.enqueue``), and PostgreSQL's channel names
    stop at 63 bytes. Longer names are shortened with a hash.
    """
    name = f"{schema}.{reaction}"
    if len(name) <= 40:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{reaction[:27]}.{digest}"


@functools.cache
def actor_name(schema: str, reaction: str) -> str:
    """The dramatiq actor that executes one reaction's messages."""
    return f"eventkit.{schema}.{reaction}"


def reaction_message(schema: str, reaction: str, notification: LoggedNotification) -> Any:
    """The dramatiq message (as JSON-ready data) for ``reaction`` and one event."""
    n = notification
    stream = n.originator_id if isinstance(n.originator_id, UUID) else UUID(str(n.originator_id))
    return message_for(
        schema,
        reaction,
        stream=stream,
        version=n.originator_version,
        notification_id=n.id,
        transaction_id=n.transaction_id,
    )


def message_for(
    schema: str,
    reaction: str,
    *,
    stream: UUID,
    version: int,
    notification_id: int,
    transaction_id: int,
) -> Any:
    """The dramatiq message for ``reaction`` and the event at ``version`` of ``stream``."""
    return {
        "queue_name": queue_name(schema, reaction),
        "actor_name": actor_name(schema, reaction),
        "args": [],
        "kwargs": {
            "stream": str(stream),
            "version": version,
            "notification_id": notification_id,
            "transaction_id": transaction_id,
        },
        "options": {},
        "message_id": str(message_id(reaction, stream, version)),
        "message_timestamp": int(time.time() * 1000),
    }


class BrokerKind(enum.Enum):
    POSTGRES = "postgres"
    RABBITMQ = "rabbitmq"
    REDIS = "redis"


def broker_kind(broker_url: str | None) -> BrokerKind:
    """Which broker ``BROKER_URL`` names; unset means the PostgreSQL broker."""
    if not broker_url or broker_url in {"postgres", "postgresql"}:
        return BrokerKind.POSTGRES
    if broker_url.startswith(("amqp://", "amqps://")):
        return BrokerKind.RABBITMQ
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        return BrokerKind.REDIS
    raise ConfigurationError(
        f"BROKER_URL={redact(broker_url)!r} names no broker eventkit knows: use amqp://... "
        "(RabbitMQ), redis://... (Redis), or leave it unset for the PostgreSQL broker"
    )


def reachable(url: str, default_port: int, timeout_s: float = 1.0) -> bool:
    """Whether a TCP connection to the host and port of ``url`` opens (a broker is up)."""
    parts = urlparse(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout_s
        ):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class BrokerOptions:
    """Timings of the PostgreSQL broker (dramatiq-postgres).

    A worker process that dies leaves the messages it had claimed marked as consumed; they
    are queued again once its heartbeat is ``heartbeat_ttl_s`` old, by the next maintenance
    pass (every ``maintenance_interval_s``, with jitter).
    """

    poll_interval_s: float = 0.2
    heartbeat_interval_s: float = 2.0
    heartbeat_ttl_s: float = 10.0
    maintenance_interval_s: float = 5.0


def create_broker(
    kind: BrokerKind,
    *,
    database_url: str,
    schema: str,
    broker_url: str | None,
    options: BrokerOptions | None = None,
    queues: int = 1,
) -> dramatiq.Broker:
    """A dramatiq broker of ``kind``, with the middleware reactions rely on
    (:func:`reaction_middleware`).

    The PostgreSQL broker gets a pool of its own, sized for ``queues`` reactions' queues,
    whose reconnection backoff and waits are bounded (see :func:`broker_pool`)."""
    broker: dramatiq.Broker
    middleware = reaction_middleware()
    if kind is BrokerKind.POSTGRES:
        o = options or BrokerOptions()
        broker = _postgres_broker_class()(
            middleware=middleware,
            pool=broker_pool(database_url, queues),
            results=False,
            schema=schema,
            prefix=DRAMATIQ_PREFIX,
            poll_interval=o.poll_interval_s,
            heartbeat_interval=o.heartbeat_interval_s,
            heartbeat_ttl=o.heartbeat_ttl_s,
            maintenance_interval=o.maintenance_interval_s,
        )
    elif kind is BrokerKind.RABBITMQ:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=broker_url, confirm_delivery=True, middleware=middleware)
    else:
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=broker_url, middleware=middleware)  # type: ignore[no-untyped-call]
    return broker


def reaction_middleware() -> list[Middleware]:
    """The dramatiq middleware of eventkit's brokers: ``Retries`` (backoff between a
    reaction's tries) and ``CurrentMessage`` (the executor reads the message's id and try).

    dramatiq's other default middleware has nothing to do for reactions' actors, yet runs
    on every message (dramatiq calls each middleware's hook for every signal, four per
    message): ``AgeLimit`` (no actor sets ``max_age``), ``TimeLimit`` (the executor limits
    the handler itself, :mod:`eventkit.projections.timelimits`), ``ShutdownNotifications``,
    ``Callbacks`` and ``Pipelines`` (no actor is declared with their options). The four
    signals of one message cost 35.5 us through all seven, 4.7 through these two (a
    ``StubBroker`` of each, best of 5 x 20,000 messages). The list is given to the
    broker's constructor, dramatiq's documented way of choosing middleware."""
    return [Retries(), CurrentMessage()]


#: Connections of the PostgreSQL broker's pool beyond two per reaction (dramatiq runs a
#: consumer, each with a connection of its own, for a queue and for its delay queue):
#: the LISTEN connection and one for enqueues of retried messages (docs/scaling.md).
BROKER_EXTRA_CONNECTIONS = 2


def broker_connections(queues: int) -> int:
    """The most connections the PostgreSQL broker opens for ``queues`` reactions."""
    return 2 * queues + BROKER_EXTRA_CONNECTIONS


def broker_pool(database_url: str, queues: int) -> Any:
    """The PostgreSQL broker's pool: :func:`broker_connections`, opened at once,
    checked on checkout (as dramatiq-postgres's own), with waits for a
    connection and the reconnection backoff bounded: after an
    outage of any length the consumers claim again within seconds of the server's return
    (dramatiq-postgres's own pool kept trying for 5 minutes with a backoff that grew to a
    minute, behind a retry that waited up to 30 s)."""
    import psycopg_pool

    from eventkit.infrastructure.database import RECONNECT_TIMEOUT_S

    return psycopg_pool.ConnectionPool(
        database_url,
        # All open from the start: a process holds as many as eventkit status says.
        min_size=broker_connections(queues),
        max_size=broker_connections(queues),
        kwargs={"application_name": "eventkit-broker", "autocommit": True},
        check=psycopg_pool.ConnectionPool.check_connection,
        timeout=RECONNECT_TIMEOUT_S,
        reconnect_timeout=RECONNECT_TIMEOUT_S,
        name="eventkit-broker",
        open=True,
    )


def _postgres_broker_class() -> Any:
    """dramatiq-postgres's broker, whose acknowledgement eventkit's actors do themselves.

    Its own acknowledgement is a transaction per message (checkout, ``DELETE``,
    ``pg_notify`` of the whole message for result waiters, commit): 44% of a worker
    thread's time in a profile of ``bench reactions``. eventkit's actors delete the message
    in the transaction that records it in the ledger instead, so acknowledging costs no
    round trip and a message is never marked done apart from its effect.

    Its consumer also claims with eventkit's own statement (on eventkit's own table; it
    returns each message's claim look, :func:`look_on_claim`, which saves the actor a
    statement per message: in three interleaved runs of 10,000 messages the worker
    process's system CPU fell from 124 - 149 to 87 - 111 us per message, its total from
    518 - 698 to 483 - 645) and hands messages out with
    a ``__next__`` of its own. Both use dramatiq-postgres's consumer state (``buffer``,
    ``in_processing``, ``prefetch``, ``timeout_s``, ``wakeup``) and upkeep
    (``maybe_heartbeat``, ``maybe_maintenance``), which its documentation does not
    promise: ``tests/contract/test_dramatiq_postgres.py`` fails when a release changes
    them or the claim's marks its reaper relies on, and the dependency is pinned below
    1.5. The fallback is the actor's own look, which runs for every message the claim did
    not look up (another broker, a queue without a look, a message found recorded).
    """
    from dramatiq_postgres.broker import PostgresBroker, PostgresConsumer
    from dramatiq_postgres.utils import check_conn, raise_connection_error

    class Consumer(PostgresConsumer):  # type: ignore[misc]
        _consume_conn: Any

        def get_consume_conn(self) -> Any:
            # dramatiq-postgres's own waits up to 30 s between tries for a connection
            # (tenacity); here a try that fails raises at once and dramatiq restarts the
            # consumer (3 s later), so consuming resumes soon after an outage ends.
            conn: Any = self._consume_conn
            if conn is not None:
                try:
                    check_conn(conn)
                except dramatiq.errors.BrokerConnectionError:
                    self.pool.putconn(conn)
                    conn = self._consume_conn = None
            if conn is None:
                conn = self.pool.getconn()
                self._consume_conn = conn
                self._release_lost_claims = True
            return conn

        buffer: list[tuple[dramatiq.Message[Any], tuple[Any, ...] | None]]
        _claim: sql.Composed | None = None

        @raise_connection_error  # type: ignore[untyped-decorator]
        def claim(self, limit: int) -> None:
            # One statement on an autocommit connection: its own transaction, one round
            # trip (dramatiq-postgres wraps it in BEGIN and COMMIT: three). The consumer
            # thread claimed for every worker thread, and claiming was 58% of its time.
            # The statement is eventkit's (the queue table is its migrations'), with the
            # queue's claim look when it has one (:func:`look_on_claim`).
            conn = self.get_consume_conn()
            if not conn.autocommit:
                conn.autocommit = True
            if getattr(self, "_release_lost_claims", False):
                self.broker.release_lost_claims(conn, self.queue_name)
                self._release_lost_claims = False
            if self._claim is None:
                self._claim = self.broker.claim_statement(self.queue_name)
            rows = conn.execute(
                self._claim, (self.queue_name, limit, self.broker.worker_id)
            ).fetchall()
            looks = len(rows[0]) > 1 if rows else False
            for row in rows:
                self.buffer.append((_decode(row[0]), row[1:] if looks else None))

        @raise_connection_error  # type: ignore[untyped-decorator]
        def __next__(self) -> Any:
            # dramatiq-postgres's, but for the connection's check: it reads the
            # connection's socket before every message to find a dead connection (7% of a
            # worker process's time in a profile of bench reactions); here that happens
            # before each claim, when the buffer is empty.
            conn = self._consume_conn
            if conn is None or not self.buffer:
                conn = self.get_consume_conn()
            self.broker.maybe_heartbeat(conn)
            self.broker.maybe_maintenance(conn)
            if not self.buffer:
                capacity = self.prefetch - len(self.in_processing)
                if capacity > 0:
                    self.claim(min(capacity, CLAIM_BATCH_MAX))
            if self.buffer:
                message, looked = self.buffer.pop(0)
                self.in_processing.add(message.message_id)
                with self.broker.in_flight_lock:
                    self.broker.in_flight.add(message.message_id)
                return ClaimedMessage(message, looked)
            # Nothing to claim, or as many in hand as the prefetch: wait for an enqueue's
            # notification, an acknowledgement, or the poll interval.
            self.wakeup.clear()
            self.wakeup.wait(min(self.timeout_s, self.broker.poll_interval))
            return None

        def ack(self, message: Any) -> None:
            # eventkit's actors delete the message in the transaction that executes it (or
            # parks it); a message retried later was queued again by dramatiq's Retries
            # (and must stay). Any message left consumed by a dead worker is queued again
            # by the broker's maintenance, and the ledger skips it if it had run.
            self.in_processing.discard(message.message_id)
            with self.broker.in_flight_lock:
                self.broker.in_flight.discard(message.message_id)
            self.wakeup.set()

        def nack(self, message: Any) -> None:
            super().nack(message)
            with self.broker.in_flight_lock:
                self.broker.in_flight.discard(message.message_id)

    class Broker(PostgresBroker):  # type: ignore[misc]
        def __init__(self, *, schema: str, **kwargs: Any) -> None:
            super().__init__(schema=schema, **kwargs)
            self.schema = schema
            self._owns_pool = True  # given by create_broker: closed with the broker
            #: Messages this process's consumers handed to its worker threads and that
            #: are not acknowledged yet (the ids of every queue: they are UUIDs).
            self.in_flight: set[str] = set()
            self.in_flight_lock = threading.Lock()
            #: Each queue's claim look (:func:`look_on_claim`), by queue name.
            self.claim_looks: dict[str, sql.Composable] = {}
            self._release = sql.SQL(
                "UPDATE {} SET state = 'queued', worker_id = NULL, consumed_at = NULL,"
                " mtime = now() WHERE queue_name = %s AND worker_id = %s"
                " AND state = 'consumed' AND NOT (message_id = ANY(%s::uuid[]))"
                " RETURNING message_id"
            ).format(sql.Identifier(schema, DRAMATIQ_PREFIX + "queue"))

        def claim_statement(self, queue: str) -> sql.Composed:
            """The claim of ``queue``'s messages (%s: the queue, how many, the worker id):
            dramatiq-postgres's, returning each message as text, then the columns of the
            queue's claim look, if it has one."""
            look = self.claim_looks.get(queue)
            return sql.SQL(_CLAIM).format(
                queue=sql.Identifier(self.schema, DRAMATIQ_PREFIX + "queue"),
                look=sql.SQL("") if look is None else sql.SQL(_CLAIM_LOOK).format(look),
                columns=sql.SQL("") if look is None else sql.SQL(", look.*"),
            )

        def release_lost_claims(self, conn: psycopg.Connection[Any], queue: str) -> None:
            """Queue again the messages of ``queue`` that this process claimed but holds
            nowhere: run on each new consuming connection, before its first claim.

            A claim commits on the server before its answer reaches the process; when
            the connection dies in between (a server restart), the claimed messages stay
            consumed under this process's worker id, which its heartbeat keeps alive, so
            the broker's maintenance never hands them out again. Messages still running
            in a worker thread are left alone."""
            with self.in_flight_lock:
                running = list(self.in_flight)
            released = conn.execute(self._release, (queue, self.worker_id, running)).fetchall()
            if released:
                logger.warning(
                    "queue %s: %d message(s) claimed on a connection that was lost were "
                    "queued again",
                    queue,
                    len(released),
                )

        def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Any:
            return Consumer(broker=self, queue_name=queue_name, prefetch=prefetch, timeout=timeout)

    return Broker


#: The most messages one claim takes, whatever the consumer's prefetch (dramatiq-postgres's
#: bound too).
CLAIM_BATCH_MAX = 256

#: Claiming up to %s messages of queue %s for worker %s: dramatiq-postgres 1.4's claim,
#: the messages read in ``next`` so that a claim look can use them.
_CLAIM: LiteralString = (
    "WITH next AS (SELECT message_id, message FROM {queue} WHERE queue_name = %s"
    " AND state = 'queued' AND available_at <= now() ORDER BY available_at, position"
    " LIMIT %s FOR UPDATE SKIP LOCKED)"
    " UPDATE {queue} q SET state = 'consumed', worker_id = %s, consumed_at = now(),"
    " mtime = now() FROM next{look} WHERE q.message_id = next.message_id"
    " RETURNING q.message::text{columns}"
)
_CLAIM_LOOK: LiteralString = " LEFT JOIN LATERAL ({}) look ON true"


class ClaimedMessage(MessageProxy):
    """A message the PostgreSQL broker claimed, with the row its queue's claim look found
    for it then (None without one)."""

    def __init__(self, message: dramatiq.Message[Any], looked: tuple[Any, ...] | None) -> None:
        super().__init__(message)
        self.looked = looked


def look_on_claim(broker: dramatiq.Broker, queue: str, look: sql.Composable) -> bool:
    """Have ``broker``'s claims of ``queue`` run ``look`` for each message they take, in
    the claim's statement: a ``SELECT`` of one row that may use ``next.message_id`` and
    ``next.message`` (the message's id and ``jsonb``). The actor finds the row as the
    current message's ``looked`` (:class:`ClaimedMessage`); a reaction's executor looks
    up its ledger and loads the event so, in the claim's round trip instead of one of its
    own per message. Call it before the worker starts: a consumer builds its claim
    statement on its first claim. Returns False (and does nothing) for a broker other
    than the PostgreSQL one."""
    looks: dict[str, sql.Composable] | None = getattr(broker, "claim_looks", None)
    if looks is None:
        return False
    looks[queue] = look
    return True


def _decode(payload: str) -> dramatiq.Message[Any]:
    """A message claimed from the queue table (its ``jsonb`` column as text).

    ``dramatiq.Message.decode`` with pydantic-core's JSON parser, which takes ~60% of
    the time of the standard library's here; the column holds JSON whatever dramatiq's
    encoder is.
    """
    try:
        fields = pydantic_core.from_json(payload)
        fields["args"] = tuple(fields["args"])
        return dramatiq.Message(**fields)
    except Exception as e:
        raise dramatiq.errors.DecodeError(  # type: ignore[no-untyped-call]
            "Failed to decode message.", payload, e
        ) from e


# -- handing messages over, in the follower's transaction ---------------------------------------

_TO_QUEUE: LiteralString = (
    "WITH m AS (INSERT INTO {target} (queue_name, message_id, state, message)"
    " VALUES (%s, %s, 'queued', %s) ON CONFLICT (message_id) DO NOTHING RETURNING queue_name)"
    " SELECT pg_notify('dramatiq.' || queue_name || '.enqueue', '') FROM m"
)
_TO_OUTBOX: LiteralString = (
    "INSERT INTO {target} (queue_name, message_id, message) VALUES (%s, %s, %s)"
    " ON CONFLICT (message_id) DO NOTHING"
)
# An operator's retry of a dead letter: queued again with a fresh count of tries.
_REQUEUE: LiteralString = (
    "WITH m AS (INSERT INTO {target} (queue_name, message_id, state, message)"
    " VALUES (%s, %s, 'queued', %s) ON CONFLICT (message_id) DO UPDATE SET"
    " state = 'queued', message = excluded.message, queue_name = excluded.queue_name,"
    " available_at = now(), worker_id = NULL, consumed_at = NULL, mtime = now()"
    " RETURNING queue_name)"
    " SELECT pg_notify('dramatiq.' || queue_name || '.enqueue', '') FROM m"
)


@dataclass(frozen=True)
class Handover:
    """Where the follower writes reaction messages for ``kind`` of broker."""

    kind: BrokerKind
    schema: str

    @property
    def target(self) -> sql.Identifier:
        table = DRAMATIQ_PREFIX + "queue" if self.kind is BrokerKind.POSTGRES else "reaction_outbox"
        return sql.Identifier(self.schema, table)

    @property
    def statement(self) -> LiteralString:
        """The statement a follower runs per message, with ``{target}`` for the table."""
        return _TO_QUEUE if self.kind is BrokerKind.POSTGRES else _TO_OUTBOX

    @staticmethod
    def params(message: Any) -> tuple[Any, ...]:
        return (message["queue_name"], message["message_id"], Jsonb(message))

    def requeue(self, conn: psycopg.Connection[Any], messages: Sequence[Any]) -> None:
        """Queue ``messages`` again in the caller's transaction (operators' retries)."""
        template = _REQUEUE if self.kind is BrokerKind.POSTGRES else _TO_OUTBOX
        statement = sql.SQL(template).format(target=self.target)
        with conn.cursor() as cur:
            cur.executemany(statement, [self.params(m) for m in messages])


class OutboxRelay:
    """Publishes ``reaction_outbox`` rows to RabbitMQ or Redis, then deletes them.

    Rows are taken with ``FOR UPDATE SKIP LOCKED``, so relays in several processes share
    the work; the delete commits only after every publish of the batch returned (with
    RabbitMQ, after the broker confirmed it).
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        database_url: str,
        schema: str,
        batch_size: int = 100,
        idle_s: float = 0.05,
    ) -> None:
        self.broker = broker
        self.database_url = database_url
        self.batch_size = batch_size
        self.idle_s = idle_s
        table = sql.Identifier(schema, "reaction_outbox")
        self._take = sql.SQL(
            "SELECT seq, message FROM {} ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED"
        ).format(table)
        self._delete = sql.SQL("DELETE FROM {} WHERE seq = ANY(%s)").format(table)
        self.relayed = 0
        self._lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                with psycopg.connect(self.database_url, autocommit=True) as conn:
                    while not stop.is_set():
                        if self.relay_once(conn) == 0:
                            stop.wait(self.idle_s)
                        delay = 0.1
            except Exception as e:  # the database or the broker: both come back
                logger.warning(
                    "reaction outbox relay: %s: %s; trying again in %.1f s",
                    type(e).__name__,
                    e,
                    delay,
                )
                stop.wait(delay)
                delay = min(delay * 2, 2.0)

    def relay_once(self, conn: psycopg.Connection[Any]) -> int:
        """Publish one batch of outbox rows and delete them; return how many."""
        with conn.transaction():
            rows = conn.execute(self._take, (self.batch_size,)).fetchall()
            for _, data in rows:
                message = data if isinstance(data, dict) else json.loads(data)
                self.broker.enqueue(dramatiq.Message(**message))
            if rows:
                conn.execute(self._delete, ([seq for seq, _ in rows],))
        with self._lock:
            self.relayed += len(rows)
        return len(rows)

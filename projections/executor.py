"""The body of a reaction's dramatiq actor: run the handler for one message, record it once.

No user code runs inside a transaction that holds a transaction id: while one does, every
follower of the log may have to wait for it (docs/architecture.md), and a handler may call
a slow service or hang. So a message runs in three steps:

1. **look**: one statement on its own (autocommit) loads the event and asks the
   idempotency ledger whether the message ran already. One that did is acknowledged by
   the same statement (PostgreSQL broker) and skipped: its handler does not run again.
   With the PostgreSQL broker the claim runs the look for each message it takes
   (:meth:`ReactionExecutor.claim_look`), and the actor sends nothing here.
2. **handle**: the handler runs outside any transaction. Its ``context.execute``
   statements are queued; calls to other services carry ``context.idempotency_key``.
3. **record**: one transaction, sent as one pipeline (one round trip): the message's
   ledger record (the claim), the broker's acknowledgement (PostgreSQL broker), the
   queued statements and ``COMMIT``. A delivery that another delivery of the same message
   recorded first fails on the ledger's key: its statements are never run, and it is
   acknowledged as a duplicate. So the effects through the context happen exactly once.

A handler that reads a statement's result (or uses ``context.conn``) needs the statement
run: the record's transaction then begins there, claim first, and the rest of the handler
runs inside it (docs/reactions.md says what that costs).

On a failure the actor lets dramatiq try again with the reaction's backoff; after the last
try it parks the message as a dead letter, and if even that fails (the database is down)
the message stays with the broker for a later try: nothing is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable
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
from eventkit.infrastructure.broker import ClaimedMessage, actor_name, queue_name
from eventkit.infrastructure.deadletters import DeadLetters
from eventkit.infrastructure.errors import EventDecodingError, EventkitError
from eventkit.infrastructure.log import LoggedNotification
from eventkit.infrastructure.recorder import PostgresEventRecorder, logged_notification
from eventkit.projections.projection import create_tables, table_identifiers
from eventkit.projections.reaction import Reaction, ReactionContext
from eventkit.projections.timelimits import HANDLER_TIME_LIMITS

logger = logging.getLogger(__name__)

_OPEN = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)
#: The longest wait before a message whose connection was lost is tried again: however
#: long the database was away, its messages run within about this long of its return.
LOST_CONNECTION_MAX_DELAY_MS = 2000
#: The ledger's primary key: a second record of one message fails on it.
_LEDGER_KEY = "reaction_ledger_pkey"
#: The claim's parameters: message id, reaction, notification id, attempt.
_CLAIM_TYPES = (libpq.UUID_OID, libpq.TEXT_OID, libpq.INT8_OID, libpq.INT4_OID)
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


class _ConnectionLost(Exception):
    """The message's connection was lost while it ran: not a try of the message."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _RecordedElsewhere(BaseException):
    """Another delivery of the message recorded it while this one ran its handler.

    A BaseException, so that a handler's ``except Exception`` does not take it for an
    error of its own when the claim is made inside the handler (a result read)."""


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


@dataclass
class ExecutorCounts:
    """What one reaction's actor did in this process."""

    executed: int = 0
    duplicates: int = 0
    failures: int = 0
    parked: int = 0


@dataclass
class _Message:
    """One delivery of a message, while it runs."""

    message_id: UUID
    attempt: int
    stream: UUID
    version: int
    notification_id: int
    transaction_id: int


class _Recording:
    """The transaction that records one delivery: begun by the claim, at the end or when
    the handler first needs a statement's result."""

    def __init__(self, executor: ReactionExecutor, conn: psycopg.Connection[Any], m: _Message):
        self.executor = executor
        self.conn = conn
        self.message = m
        self.begun = False

    def begin(self) -> None:
        """BEGIN and the claim, now (the handler needs a result): one round trip."""
        self._claim(commit=False)
        self.begun = True

    def commit(self, context: ReactionContext) -> None:
        """Send what is left (BEGIN and the claim unless begun, the queued statements) and
        COMMIT. Raises :class:`_RecordedElsewhere` for a duplicate."""
        conn = self.conn
        if conn.pgconn.transaction_status == pq.TransactionStatus.INERROR:
            # A statement failed and the handler went on: PostgreSQL would answer COMMIT
            # with a silent rollback. Say so, and let the message be tried again.
            raise HandlerSwallowedError(
                f"reaction {self.executor.name!r}: a database statement of the handler "
                "failed and the handler returned normally; nothing of the message was "
                "committed"
            )
        if not context.has_queued():
            if self.begun:
                libpq.command(conn, b"COMMIT")
            else:  # BEGIN, the claim and COMMIT in one round trip
                self._claim(commit=True)
            return
        if not self.begun:
            self._claim(commit=False)
        # The statements and COMMIT in one round trip.
        with conn.pipeline():
            context.send_queued(results=False)
            conn.execute(b"COMMIT")

    def _claim(self, *, commit: bool) -> None:
        """BEGIN and the claim (the ledger record, the acknowledgement), through libpq in
        one simple query: a psycopg cursor and pipeline cost a reaction worker ~100 us of
        its CPU per message more (measured with a loop of executions)."""
        m = self.message
        statement, name = self.executor.claim_statement(self.conn)
        try:
            statement.begin_and_run(
                self.conn,
                f"'{m.message_id}', {name}, {m.notification_id:d}, {m.attempt:d}",
                commit=commit,
            )
        except psycopg.errors.UniqueViolation as e:
            if e.diag.constraint_name != _LEDGER_KEY:
                raise
            raise _RecordedElsewhere from e


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
        in the transaction that records or parks the message (the broker's own
        acknowledgement is then a no-op).

        ``durable_commits=False`` (the default) lets a message's transaction commit without
        waiting for the disk (``synchronous_commit`` off for that transaction only). A
        server crash can then lose the last records whole: their ledger rows, their
        effects through the context and their acknowledgements together. The broker hands
        those messages out again and they run again, which at-least-once delivery allows
        (an external call sees the same idempotency key again); an effect through the
        context still happens exactly once. The reaction workers' server CPU fell by
        ~15-20% in bench reactions."""
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
        ledger = sql.Identifier(schema, "reaction_ledger")
        #: The acknowledgement of the PostgreSQL broker (None with another broker).
        self.ack = (
            None
            if queue_table is None
            else sql.SQL("DELETE FROM {} WHERE message_id = %s AND state = 'consumed'").format(
                queue_table
            )
        )
        # The look: whether the ledger holds the message (then acknowledged at once), and
        # the event's columns (NULL when the store does not hold it). $1 message id, $2
        # notification id.
        self._look_sql = sql.SQL(
            "WITH done AS (SELECT 1 FROM {ledger} WHERE message_id = $1){ack}"
            " SELECT EXISTS (SELECT 1 FROM done), e.* FROM (SELECT 1) one"
            " LEFT JOIN ({load}) e ON true"
        ).format(
            ledger=ledger,
            ack=sql.SQL("")
            if queue_table is None
            else sql.SQL(
                ", acked AS (DELETE FROM {} WHERE message_id = $1 AND state = 'consumed'"
                " AND EXISTS (SELECT 1 FROM done))"
            ).format(queue_table),
            load=recorder.notification_query(sql.SQL("$2")),
        )
        self._look: libpq.PreparedStatement | None = None
        #: The look as the PostgreSQL broker's claim runs it for each message it takes
        #: (:meth:`claim_look`): the same columns, with the message's id and notification
        #: id taken from the claimed row (``next``).
        self._claim_look = sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {ledger} WHERE message_id = next.message_id),"
            " e.* FROM (SELECT 1) one LEFT JOIN ({load}) e ON true"
        ).format(
            ledger=ledger,
            load=recorder.notification_query(
                sql.SQL("(next.message -> 'kwargs' ->> 'notification_id')::bigint")
            ),
        )
        # The claim, first in the record's transaction: the ledger record, with the
        # PostgreSQL broker the acknowledgement, and the commit mode. $1 message id,
        # $2 reaction, $3 notification id, $4 attempt.
        self._claim_sql = sql.SQL(
            "{ack}INSERT INTO {ledger} (message_id, reaction, notification_id, attempt)"
            " SELECT $1, $2, $3, $4 FROM ({mode}) mode"
        ).format(
            ack=sql.SQL("")
            if queue_table is None
            else sql.SQL(
                "WITH acked AS (DELETE FROM {} WHERE message_id = $1 AND state = 'consumed') "
            ).format(queue_table),
            ledger=ledger,
            mode=sql.SQL("SELECT 1" if durable_commits else _ASYNC_COMMIT),
        )
        #: The claim, prepared, and the reaction's name as an SQL literal: built on the
        #: first message (both need a connection).
        self._claim: tuple[libpq.PreparedStatement, str] | None = None

    def claim_look(self) -> sql.Composed:
        """The look, for the PostgreSQL broker's claim to run for each message it takes
        (:func:`~eventkit.infrastructure.broker.look_on_claim`): the actor then finds the
        message's row in hand and skips its own look, a round trip per message.

        The ledger is read at the claim, not just before the handler runs; between the two
        (a few milliseconds in the consumer's buffer and dramatiq's work queue) another
        delivery of the same message can only be one the broker handed out again because
        this process looked dead, and then both run the handler, as they would had they
        overlapped by a little more: at least once, still. Its record fails on the
        ledger's key and it is acknowledged as a duplicate, so the effects through the
        context happen once. A claim that finds the message recorded already leaves it to
        the actor's own look, which acknowledges it."""
        return self._claim_look

    def claim_statement(self, conn: psycopg.Connection[Any]) -> tuple[libpq.PreparedStatement, str]:
        """The claim's prepared statement and the reaction's name as a literal."""
        if self._claim is None:
            self._claim = (
                libpq.PreparedStatement(self._claim_sql.as_string(conn), _CLAIM_TYPES),
                libpq.literal(conn, self.name),
            )
        return self._claim

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
            looked=message.looked if isinstance(message, ClaimedMessage) else None,
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
        looked: tuple[Any, ...] | None = None,
    ) -> None:
        """Run the reaction for one message, or raise to have dramatiq try it again.
        ``looked``: the look's row, when the broker's claim ran it (:meth:`claim_look`)."""
        m = _Message(message_id, attempt, stream, version, notification_id, transaction_id)
        try:
            n = self._run(m, looked)
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
        except _ConnectionLost as lost:
            # The database connection, not the reaction: not a try. The message is tried
            # again after a backoff, as often as it takes for the database to come back.
            error = lost.error
            metrics.ERRORS.labels("reaction", self.name, type(error).__name__).inc()
            hidden = _QUIET.hidden_since_last(self.name, error)
            if hidden is not None:
                logger.warning(
                    "reaction %s: database connection lost (or none to be had) while running "
                    "message %s (stream %s version %s): %s; trying again (not counted as a try)%s",
                    self.name,
                    message_id,
                    stream,
                    version,
                    error,
                    _QUIET.said(hidden),
                    extra={"consumer": self.name, "error_class": type(error).__name__},
                )
            _RETRIES_LOGGED.said(message_id)
            raise dramatiq.Retry(
                f"database connection lost: {error}", delay=self._uncount_try()
            ) from error
        except Exception as error:
            self._failed(m, error)
            return
        if n is None:
            self._duplicate(m)
            return
        with self._lock:
            self.counts.executed += 1
        self._m_executed.inc()
        self._m_latency.observe(time.time() - n.recorded_at.timestamp())

    def _run(self, m: _Message, looked: tuple[Any, ...] | None) -> LoggedNotification | None:
        """Look (unless the claim did: ``looked``), handle, record: the message's
        notification, or None for a duplicate."""
        try:
            conn = self.pool.getconn()
        except psycopg_pool.PoolTimeout as e:  # the database is away: not the message's try
            raise _ConnectionLost(e) from e
        try:
            # A message the claim found recorded already is looked up again: that look
            # acknowledges it.
            row = (
                looked
                if looked is not None and not looked[0]
                else self._look_up(conn, m.message_id, m.notification_id)
            )
            if row[0]:
                return None
            if row[1] is None:
                raise _Unrunnable(
                    _missing(m.stream, m.version, m.notification_id, m.transaction_id),
                    MissingEventError(
                        f"reaction {self.name!r}: message {m.message_id} names stream "
                        f"{m.stream} version {m.version} (position {m.transaction_id}/"
                        f"{m.notification_id}), which the store does not hold"
                    ),
                    "failed",
                )
            n = logged_notification(row[1:])
            try:
                event = self.mapper.to_domain_event(n)
            except EventDecodingError as e:
                raise _Unrunnable(n, e, "undecodable") from e
            except Exception as e:  # a mapper of the application's own
                error = EventDecodingError(
                    f"cannot decode stream {n.originator_id} version {n.originator_version} "
                    f"(notification {n.id}, topic {n.topic}): {type(e).__name__}: {e}"
                )
                raise _Unrunnable(n, error, "undecodable") from e
            handler = self._handler(type(event))
            recording = _Recording(self, conn, m)
            context = ReactionContext(
                conn,
                self.tables,
                n,
                reaction=self.name,
                message_id=m.message_id,
                attempt=m.attempt,
                begin=recording.begin,
            )
            try:
                HANDLER_TIME_LIMITS.run(
                    type(self.reaction).time_limit_ms / 1000,
                    lambda: handler(self.reaction, event, context),
                    what=lambda: (
                        f"reaction {self.name!r} on stream {m.stream} version "
                        f"{m.version} (message {m.message_id}, attempt {m.attempt})"
                    ),
                )
                recording.commit(context)
            except _RecordedElsewhere:
                self._end(conn)
                if self.ack is not None:
                    conn.execute(self.ack, (m.message_id,))
                return None
            return n
        except Exception as e:
            lost = libpq.connection_lost(conn) or isinstance(e, libpq.StatementLostError)
            self._end(conn)
            if lost and not isinstance(e, _Unrunnable):
                # Told by the connection's state: an OperationalError on a working
                # connection (a statement timeout, a lock timeout, a value too large to
                # index) is the handler's failure, and counts as a try.
                raise _ConnectionLost(e) from e
            raise
        except BaseException:
            self._end(conn)
            raise
        finally:
            self.pool.putconn(conn)

    @staticmethod
    def _end(conn: psycopg.Connection[Any]) -> None:
        """Roll back what the connection has open; close it if it is mid-statement (a
        handler interrupted inside a call of its own), so the pool does not reuse it."""
        status = conn.pgconn.transaction_status
        if status in _OPEN:
            with contextlib.suppress(psycopg.Error):  # the connection is gone
                libpq.command(conn, b"ROLLBACK")
        elif status != pq.TransactionStatus.IDLE:
            conn.close()

    def _look_up(
        self, conn: psycopg.Connection[Any], message_id: UUID, notification_id: int
    ) -> tuple[Any, ...]:
        """Run the look on ``conn`` (autocommit): whether the ledger holds the message,
        then the event's columns (NULL when the store does not hold it)."""
        if self._look is None:
            self._look = libpq.PreparedStatement(
                self._look_sql.as_string(conn), (libpq.UUID_OID, libpq.INT8_OID)
            )
        result = self._look.run(
            conn, (str(message_id).encode(), str(notification_id).encode()), (0, 0)
        )
        transformer = Transformer.from_context(conn)
        transformer.set_pgresult(result)
        row: tuple[Any, ...] = transformer.load_row(0, tuple)
        return row

    def _duplicate(self, m: _Message) -> None:
        self._m_duplicate.inc()
        with self._lock:
            self.counts.duplicates += 1
        logger.info(
            "reaction %s: message %s (stream %s version %s) already executed; skipped",
            self.name,
            m.message_id,
            m.stream,
            m.version,
        )

    def _failed(self, m: _Message, error: Exception) -> None:
        """Count a failed try; raise dramatiq.Retry for another, or park after the last."""
        with self._lock:
            self.counts.failures += 1
        metrics.ERRORS.labels("reaction", self.name, type(error).__name__).inc()
        max_attempts = type(self.reaction).max_attempts
        if m.attempt < max_attempts:
            self._m_retried.inc()
            metrics.RETRIES.labels("reaction", self.name).inc()
            hidden = _QUIET.hidden_since_last(self.name, error)
            if hidden is not None:
                logger.warning(
                    "reaction %s failed on stream %s version %s (position %s/%s, message %s, "
                    "attempt %d of %d): %s: %s; trying again%s",
                    self.name,
                    m.stream,
                    m.version,
                    m.transaction_id,
                    m.notification_id,
                    m.message_id,
                    m.attempt,
                    max_attempts,
                    type(error).__name__,
                    error,
                    _QUIET.said(hidden),
                    extra={
                        "consumer": self.name,
                        "kind": "reaction",
                        "error_class": type(error).__name__,
                        "position": f"{m.transaction_id}/{m.notification_id}",
                        "stream": str(m.stream),
                        "version": m.version,
                        "message_id": str(m.message_id),
                    },
                )
            # Retry, not the error itself: dramatiq logs any other exception with its
            # traceback at ERROR on every try; the line above says what happened.
            _RETRIES_LOGGED.said(m.message_id)
            raise dramatiq.Retry(f"{type(error).__name__}: {error}") from error
        n = self._notification(m.stream, m.version, m.notification_id, m.transaction_id)
        self._park(
            n,
            message_id=m.message_id,
            attempt=m.attempt,
            reason="failed",
            error=error,
            tb="".join(traceback.format_exception(error)),
        )

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
        ceiling = min(
            r.max_backoff_ms, LOST_CONNECTION_MAX_DELAY_MS, r.min_backoff_ms * 2 ** min(lost, 20)
        )
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
            if self.ack is not None:
                conn.execute(self.ack, (message_id,))
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
                "error_class": type(error).__name__,
                "position": str(n.position),
                "stream": str(n.originator_id),
                "version": n.originator_version,
                "message_id": str(message_id),
            },
        )


#: A failed try whose error (class and text) is the same as one logged less than this many
#: seconds ago, for the same reaction, is counted but not logged: a payment gateway that is
#: down fails every message the same way, and one line in QUIET_S says so (the next line
#: says how many were not logged). Dead letters are always logged.
QUIET_S = 10.0


class _Quiet:
    """Which failed tries to log: the first of identical ones in each QUIET_S."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def hidden_since_last(self, reaction: str, error: BaseException) -> int | None:
        """None when this failure is not to be logged; else how many identical ones were
        not logged since the last that was."""
        key = (reaction, type(error).__name__, str(error))
        now = time.monotonic()
        with self._lock:
            logged_at, hidden = self._seen.get(key, (-QUIET_S, 0))
            if now - logged_at < QUIET_S:
                self._seen[key] = (logged_at, hidden + 1)
                return None
            if len(self._seen) > 1000:  # forget the quiet ones
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < QUIET_S}
            self._seen[key] = (now, 0)
            return hidden

    @staticmethod
    def said(hidden: int) -> str:
        if not hidden:
            return ""
        return f" ({hidden} more tries failed the same way in the last {QUIET_S:.0f} s, not logged)"


_QUIET = _Quiet()


class _RetriesLogged(logging.Filter):
    """One log line per failed try: the executor's, which says why. dramatiq's Retries
    middleware then logs "Retrying message ID in N milliseconds." for the same try; this
    filter, on that middleware's logger, drops those lines for the messages the executor
    has just logged (other actors' retries are logged as dramatiq does)."""

    def __init__(self) -> None:
        super().__init__()
        self._ids: dict[str, None] = {}
        self._lock = threading.Lock()

    def said(self, message_id: UUID) -> None:
        with self._lock:
            self._ids[str(message_id)] = None
            while len(self._ids) > 10_000:  # retries not logged by dramatiq after all
                del self._ids[next(iter(self._ids))]

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith("Retrying message")):
            return True
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        key = str(args[0]) if args else ""
        with self._lock:
            if key in self._ids:
                del self._ids[key]
                return False  # the executor's line said it
        return True


_RETRIES_LOGGED = _RetriesLogged()


def declare_actor(broker: dramatiq.Broker, schema: str, executor: ReactionExecutor) -> Any:
    """Register ``executor`` as the dramatiq actor of its reaction on ``broker``.

    dramatiq's own retry limit is off (``max_retries=None``): the executor counts tries and
    parks the message after the reaction's last one, so a message is never dropped by the
    broker. Backoff (exponential, with jitter) is dramatiq's, with the reaction's bounds.
    dramatiq's time limit is not among the broker's middleware
    (:func:`~eventkit.infrastructure.broker.reaction_middleware`): the executor limits the
    handler alone to the reaction's ``time_limit_ms`` (:mod:`projections.timelimits`),
    where dramatiq's, were its timer started, could interrupt the record's ``COMMIT``.
    """
    retries = logging.getLogger("dramatiq.middleware.retries.Retries")
    if _RETRIES_LOGGED not in retries.filters:
        retries.addFilter(_RETRIES_LOGGED)
    r = type(executor.reaction)
    return dramatiq.actor(
        broker=broker,
        actor_name=actor_name(schema, r.name),
        queue_name=queue_name(schema, r.name),
        max_retries=None,
        min_backoff=r.min_backoff_ms,
        max_backoff=r.max_backoff_ms,
    )(executor)

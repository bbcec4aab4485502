"""The follower: follows the log for one partition of one consumer (a projection or a
reaction) and hands each batch of its events to an :class:`Applier`.

Everything about following the log is here; what a batch *does* is the applier's (a
projection's handlers writing its view, or a reaction's messages going to the broker):

- **lease**: one follower per partition at a time, under a lease row whose generation
  every batch transaction checks before it commits (:mod:`infrastructure.leases`);
  :meth:`Follower.attach` starts work under a lease, :meth:`Follower.detach` gives it
  back. Standalone (:meth:`Follower.run`) the follower waits for and renews its lease
  itself; in ``eventkit workers`` a :class:`~projections.group.WorkerGroup` does.
- **position**: where the partition is, in ``tracking``, recorded in each batch's
  transaction by compare-and-set from the position read (:mod:`infrastructure.tracking`);
  on a first run, where the consumer's ``start_from`` says. A position an operator moved
  (``eventkit reset``) is adopted at the next heartbeat.
- **reading**: the recorder's gap-safe scan (:meth:`PostgresEventRecorder.scan`), filtered
  to the consumer's event types and partition, on the primary or on a streaming replica
  (``FollowerOptions.reader``, ``EVENTKIT_READ_URL``); while catching up, the next batch is read
  and decoded by a reader thread while the current one is applied; when nothing is new,
  an adaptive poll (:class:`Idle`), woken early by a writer's ``NOTIFY`` when enabled.
- **the batch loop**: as much of a batch as possible per transaction; a failing event is
  retried alone with backoff, then parked as a dead letter, and, for consumers whose
  order per stream matters (projections), its stream's later events are parked behind
  it; dead letters an operator asked to retry are reprocessed in order.
- **state and metrics**: the partition's row in ``consumer_workers`` (``eventkit
  status``) and the Prometheus metrics of :mod:`infrastructure.metrics`.

Exactly once: each batch's writes and the new position are one transaction, on the
connection that holds the partition's lease, and the position only moves from the value
the follower read. A crash at any point leaves either the whole batch or none of it; a
second follower waits for the lease; one that lost its lease cannot commit. The follower
never moves its position past an event it has neither applied nor parked.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any
from uuid import UUID

import psycopg
from prometheus_client import Gauge
from psycopg import pq, sql

from eventkit.infrastructure import metrics
from eventkit.infrastructure.deadletters import DeadLetter, DeadLetters
from eventkit.infrastructure.errors import EventDecodingError, PersistenceError
from eventkit.infrastructure.leases import Lease, LeaseLostError, Leases
from eventkit.infrastructure.libpq import connection_lost
from eventkit.infrastructure.log import LoggedNotification, Position, describe_start
from eventkit.infrastructure.partitions import Partition, record_partitions
from eventkit.infrastructure.recorder import PostgresEventRecorder, Scan
from eventkit.infrastructure.tracking import Tracking, TrackingConflictError
from eventkit.projections.applier import Applier
from eventkit.projections.liveness import Beat
from eventkit.projections.projection import Context

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing event is tried, and how long to wait between tries."""

    max_attempts: int = 5
    first_delay_s: float = 0.1
    max_delay_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter before try ``attempt + 1``."""
        ceiling = min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


#: The longest wait between a loop's attempts to reconnect to the database: however long
#: it was away, a worker resumes within about this long of its return.
RECONNECT_MAX_DELAY_S = 2.0

#: A rebuild's last stretch runs under table locks that readers wait for: no retries.
TRY_ONCE = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class PollPolicy:
    """How a follower waits when the log has nothing new: an interval that grows while idle."""

    min_interval_s: float = 0.002
    max_interval_s: float = 0.05
    lease_wait_s: float = 0.5
    #: How often the follower looks for dead letters an operator asked to retry.
    retry_check_s: float = 0.25


@dataclass(frozen=True)
class BatchReport:
    """What one committed batch did, for logs, metrics and progress bars."""

    consumer: str
    applied: int
    parked: int
    position: Position
    notifications: Sequence[LoggedNotification]
    #: When the read that returned these events came back (``time.time()``): the batch's
    #: time from commit to read is the log's (the writers' commits, the horizon, the poll),
    #: from read to report the follower's own (decoding, handlers, the view's commit).
    read_at: float = 0.0


@dataclass(frozen=True)
class FollowerOptions:
    """Where the log is and how followers follow it: one value serves every follower of a
    process (a rebuild's follower has its own, which reports ``rebuilding``)."""

    #: The database (each follower opens its own connection: see :func:`connect`).
    url: str
    #: The primary's recorder: positions are initialised and dead letters read through
    #: it, and a rebuild's last stretch reads the log through it, under its locks.
    recorder: PostgresEventRecorder
    #: This process's id in the worker group: leases and state rows name it.
    worker_id: str
    batch_size: int = 1000
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
    lease_ttl_s: float = 5.0
    #: Whether each batch's commit waits for the disk (see :func:`connect`).
    durable_commits: bool = False
    #: LISTEN here for writers' hints (``EVENTKIT_NOTIFY``); None: poll only.
    notify_channel: str | None = None
    #: The state a follower reports while it works: ``running``, or ``rebuilding``.
    state: str = "running"
    #: Called after each committed batch (in the follower's thread).
    on_batch: Callable[[BatchReport], None] | None = None
    #: OpenTelemetry spans for the events applied (``EVENTKIT_TRACING``).
    tracing: bool = False
    #: Where the follower's scans read the log (through its pool, from the follower's
    #: reader thread too): a streaming replica's recorder (``EVENTKIT_READ_URL``), or None
    #: for ``recorder``'s. The log's horizon is gap-safe on a hot standby as on the primary
    #: (docs/architecture.md); a read the standby cancels is retried as a lost connection.
    reader: PostgresEventRecorder | None = None

    @property
    def schema(self) -> str:
        return self.recorder.schema


def connect(
    url: str, worker_id: str, lease_ttl_s: float, *, durable_commits: bool = True
) -> psycopg.Connection[Any]:
    """A follower's (or a worker group's) connection.

    A transaction left idle longer than a lease lives (its process paused by SIGSTOP or a
    debugger, or cut off) is ended by the server, so the row locks it holds (a lease
    row's, checked by its fence) never block a takeover for longer than the lease would
    have.

    ``durable_commits=False`` sets ``synchronous_commit = off``: a batch's commit returns
    without waiting for its WAL to reach disk. Safe for views: a batch and its position are
    one transaction, so a server crash can only lose the last batches whole (at most
    3 x ``wal_writer_delay``), and the follower applies them again from the position that
    was lost with them. The events themselves are written with durable commits.
    """
    options = f"-c idle_in_transaction_session_timeout={int(lease_ttl_s * 1000)}"
    if not durable_commits:
        options += " -c synchronous_commit=off"
    return psycopg.connect(
        url, autocommit=True, application_name=f"eventkit:{worker_id}", options=options
    )


#: The first wait after a writer's hint whose read found nothing new (it doubles from
#: there as any idle wait does): the hinted event can be committed yet not readable for a
#: moment, held back by an older transaction (the log's horizon), and must not wait a
#: whole poll interval for that.
HINT_RECHECK_S = 0.002


class Idle:
    """The wait of a consumer's loop that found nothing new: an interval that doubles from
    the poll policy's minimum to its maximum, reset by :meth:`busy`, and cut short by a
    writer's notification on ``channel`` (the hint only shortens the wait: a lost
    notification, or a pooler that drops LISTEN, costs at most one interval). After a
    hint, the interval starts again from :data:`HINT_RECHECK_S` at most."""

    def __init__(self, poll: PollPolicy, channel: str | None, kind: str, consumer: str) -> None:
        self.poll = poll
        self.channel = channel
        self.interval = poll.min_interval_s
        self._woken = {
            cause: metrics.WAKEUPS.labels(kind, consumer, cause)
            for cause in ("poll", "notification")
        }

    def listen(self, conn: psycopg.Connection[Any]) -> None:
        """Subscribe ``conn`` to writers' hints (once per connection)."""
        if self.channel is not None:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))

    def busy(self) -> None:
        """Something was read: wait the shortest interval next time."""
        self.interval = self.poll.min_interval_s

    def wait(self, conn: psycopg.Connection[Any], stop: threading.Event) -> None:
        """Wait the interval (or until a hint arrives), then double it."""
        cause = "poll"
        if self.channel is None:
            stop.wait(self.interval)
        else:
            # In slices, so that a stop is seen within a quarter of a second however long
            # the interval (a notifies() wait does not watch the stop event).
            deadline = time.monotonic() + self.interval
            while cause == "poll" and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for _ in conn.notifies(timeout=min(left, 0.25), stop_after=1):
                    cause = "notification"
        self._woken[cause].inc()
        if cause == "notification":
            # Something was written: look again soon if the read finds it not readable yet.
            self.interval = min(self.poll.min_interval_s, HINT_RECHECK_S)
        else:
            self.interval = min(self.interval * 2, self.poll.max_interval_s)


@contextlib.contextmanager
def _pipelined_transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction whose ``BEGIN``, statements and ``COMMIT`` share one pipeline (the
    block's own reads, such as the position's update, wait for their results as usual).

    psycopg's ``conn.transaction()`` in pipeline mode opens two nested pipelines of its
    own, and each of the three pipelines' exits sends a Sync and waits for it: a live
    follower's batch of ~25 events paid three round trips more than it needs, each a
    wakeup of the follower and of its server process. On an error the pipeline is left
    (its pending results are read, as psycopg does) and the transaction rolled back; a
    ``COMMIT`` that fails raises as it would in ``conn.transaction()``. Inside the
    caller's transaction (a rebuild's last stretch, :meth:`Follower.finish`) it is a
    savepoint of that one, as ``conn.transaction()`` makes it.
    """
    if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        with conn.pipeline(), conn.transaction():
            yield
        return
    try:
        with conn.pipeline():
            conn.execute(b"BEGIN")
            yield
            conn.execute(b"COMMIT")
    except BaseException:
        if (
            not connection_lost(conn)
            and conn.pgconn.transaction_status != pq.TransactionStatus.IDLE
        ):
            conn.rollback()
        raise


class _HandlerFailure(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error
        self.traceback = "".join(traceback.format_exception(error))


@dataclass(frozen=True)
class _Parked:
    """A dead letter parked in a transaction not yet committed: logged and counted once
    it is (a transaction fenced off by a lost lease parks nothing)."""

    dead_letter_id: int
    notification: LoggedNotification
    reason: str
    attempts: int
    error: BaseException


@dataclass
class _Item:
    notification: LoggedNotification
    event: object | None
    decoding_error: EventDecodingError | None


@dataclass(frozen=True)
class _Read:
    scan: Scan
    items: list[_Item]
    #: When the scan came back (``time.time()``), for :class:`BatchReport`.
    at: float


class Follower:
    """Follows the log for ``partition`` of consumer ``name`` (its tracking name: a
    rebuild's copy is ``NAME#rebuild``) and applies its events with ``applier``."""

    def __init__(
        self, name: str, applier: Applier, partition: Partition, options: FollowerOptions
    ) -> None:
        self.name = name
        self.applier = applier
        self.partition = partition
        self.options = options
        self.kind = applier.kind
        self.recorder = options.recorder
        #: Where this follower's scans read the log: a replica's recorder, or the primary's.
        self.reader = options.reader or options.recorder
        self.leases = Leases(options.schema, options.lease_ttl_s)
        self.tracking = Tracking(options.schema)
        self.dead_letters = DeadLetters(options.schema)
        self.topics = applier.consumer.topics()
        #: The lease this follower works under (None while it has none).
        self.lease: Lease | None = None
        #: The last position this follower committed (or read when it attached).
        self.position = Position.ORIGIN
        #: Set once a read reaches the head of the log.
        self.caught_up = threading.Event()
        #: The sign of life of the loop that turns this follower (health checks): its own
        #: when standalone; a worker group gives it its consumer loop's.
        self.beat = Beat(f"{self.kind} {self.label}")
        # Standalone (run()) the follower renews its own lease; in a group the group does.
        self._standalone = False
        self._renewed_at = 0.0
        self._reader: ThreadPoolExecutor | None = None
        self._ahead: tuple[Position, Future[_Read]] | None = None
        self._read_at = 0.0  # the batch in hand's read (BatchReport.read_at)
        # Only this partition's owner parks letters of its streams when the key is the
        # stream; with other keys, other partitions park letters of the same streams.
        self._own_letters = partition.whole or partition.key == "stream"
        self._none_parked = False  # not known: read the dead letters
        self._heartbeat_at = 0.0
        self._retries_checked_at = 0.0
        self._statements: dict[str, bytes] = {}
        #: Dead letters parked in the transaction in hand (see _reporting_parks).
        self._parked: list[_Parked] = []
        part = str(partition.index)
        self._m_batches = metrics.BATCHES.labels(self.kind, name, part)
        self._m_batch_events = metrics.BATCH_EVENTS.labels(self.kind, name)
        self._m_latency = metrics.PROCESSED_LATENCY.labels(self.kind, name)
        # Made by attach: a partition this process does not work on exports neither.
        self._m_heartbeat: Gauge | None = None
        self._m_lease: Gauge | None = None
        self._m_processed: dict[str, Any] = {}

    @property
    def label(self) -> str:
        """The consumer's name, with its partition when it has several."""
        p = self.partition
        return self.name if p.whole else f"{self.name}[{p.index}/{p.count}]"

    # -- standalone -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Work on this partition until ``stop`` is set, managing its own lease.

        Waits for the lease, then follows the log, renewing the lease as it goes.
        Reconnects after a lost connection, takes the lease again after losing it, and
        re-reads the position after a conflict. Returns when ``stop`` is set, after the
        batch in hand is committed; gives the lease back so a waiting follower takes over
        at once. (``eventkit workers`` runs partitions under a :class:`WorkerGroup`
        instead, which shares them out between processes.)
        """
        self._standalone = True
        o = self.options
        idle = Idle(o.poll, o.notify_channel, self.kind, self.name)
        try:
            self._run(stop, idle)
        finally:
            self.beat.connected(None)

    def _run(self, stop: threading.Event, idle: Idle) -> None:
        o = self.options
        delay = 0.1
        while not stop.is_set():
            try:
                self.beat.connecting()
                with connect(
                    o.url, o.worker_id, o.lease_ttl_s, durable_commits=o.durable_commits
                ) as conn:
                    self.beat.connected(conn)
                    if self.lease is None:
                        lease = self._wait_for_lease(conn, stop)
                        if lease is None:
                            return
                    else:
                        lease = self.lease  # kept across a reconnect: rows need no session
                    self.attach(conn, lease)
                    idle.listen(conn)
                    delay = 0.1
                    self._follow(conn, stop, idle)
                    self.detach(conn)
                    return
            except (psycopg.Error, PersistenceError) as e:
                self.beat.connecting()  # the connection is gone: waiting for the database
                self._close_reader()
                if isinstance(e, LeaseLostError):
                    self.lease = None
                if self._m_lease is not None:
                    self._m_lease.set(0)
                metrics.ERRORS.labels(self.kind, self.name, type(e).__name__).inc()
                if stop.is_set():
                    return
                logger.warning(
                    "%s %s: %s: %s; reconnecting in %.1f s",
                    self.kind,
                    self.label,
                    type(e).__name__,
                    e,
                    delay,
                    extra={**self._fields(), "error_class": type(e).__name__},
                )
                self.beat.connecting()  # waiting to connect again
                stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)

    def _wait_for_lease(self, conn: psycopg.Connection[Any], stop: threading.Event) -> Lease | None:
        said = False
        while True:
            lease = self.leases.acquire(
                conn, self.name, self.partition.index, self.options.worker_id
            )
            if lease is not None:
                if said:
                    metrics.LEASE_TAKEOVERS.labels(self.kind, self.name).inc()
                return lease
            if not said:
                rows = self.leases.rows(conn, [self.name])
                row = next((r for r in rows if r.partition == self.partition.index), None)
                logger.info(
                    "%s %s is owned by %s (lease expires in %.1f s unless renewed); waiting "
                    "to take over",
                    self.kind,
                    self.label,
                    row.owner if row else "another worker",
                    row.expires_in_s if row else 0.0,
                )
                said = True
            if stop.wait(self.options.poll.lease_wait_s):
                return None
            self.beat.turn()  # waiting for the lease is turning too

    def _follow(self, conn: psycopg.Connection[Any], stop: threading.Event, idle: Idle) -> None:
        try:
            while not stop.is_set():
                self._renew_if_due(conn)
                if self.step(conn, stop):
                    idle.busy()
                else:
                    idle.wait(conn, stop)
        finally:
            self._close_reader()

    def _renew_if_due(self, conn: psycopg.Connection[Any]) -> None:
        """Standalone: renew the lease every third of its time to live."""
        if self.lease is None or time.monotonic() - self._renewed_at < self.leases.ttl_s / 3:
            return
        held = self.leases.renew(conn, self.options.worker_id)
        self._renewed_at = time.monotonic()
        if self.lease not in held:
            raise LeaseLostError(
                f"{self.kind} {self.label}: worker {self.options.worker_id} lost its lease "
                f"(generation {self.lease.generation}) before it could renew it"
            )

    # -- under a lease ----------------------------------------------------------------------

    def attach(self, conn: psycopg.Connection[Any], lease: Lease) -> None:
        """Start working under ``lease``: prepare the applier (the view's tables), record
        the consumer's partitions and, on its first run, its start; read the position."""
        self.lease = lease
        part = str(self.partition.index)
        # Made again: detach removed them (a handed-over partition exports no series).
        self._m_heartbeat = metrics.LOOP_HEARTBEAT.labels(self.kind, self.name, part)
        self._m_lease = metrics.LEASE_OWNED.labels(self.kind, self.name, part)
        self._m_lease.set(1)
        for topic in self.topics:  # from 0: a rate exists from the start (EventkitStuck)
            self._processed(topic)
        start = self.applier.consumer.start_from
        with self.beat.waiting(), conn.transaction():  # the start is read through the pool
            self.applier.prepare(conn)
            record_partitions(conn, self.options.schema, self.name, self.partition.count)
            first = self.tracking.initialise(
                conn, self.name, self.partition.count, lambda: self.recorder.start_position(start)
            )
        if first is not None:
            logger.info(
                "%s %s: first run, starting from %s: position %s",
                self.kind,
                self.name,
                describe_start(start),
                first,
            )
        self.position = self.tracking.position(conn, self.name, self.partition.index)
        # Once the position is read: the line says where this worker goes on from.
        logger.info(
            "%s %s: worker %s took the lease (generation %d) at position %s",
            self.kind,
            self.label,
            self.options.worker_id,
            lease.generation,
            self.position,
            extra=self._fields(),
        )
        self._none_parked = not self.applier.sequenced
        self._renewed_at = time.monotonic()
        self._set_state(conn, self.options.state)

    def detach(self, conn: psycopg.Connection[Any] | None, *, stopped: bool = True) -> None:
        """Stop working: record the state and give the lease back (when ``conn`` works)."""
        self._close_reader()
        lease, self.lease = self.lease, None
        # This process works on the partition no more: its series go (a heartbeat left
        # behind would age until a stalled-loop alert fired for a partition another
        # worker runs).
        part = str(self.partition.index)
        metrics.LOOP_HEARTBEAT.remove(self.kind, self.name, part)
        metrics.LEASE_OWNED.remove(self.kind, self.name, part)
        if self.reader is not self.recorder:
            with contextlib.suppress(KeyError):  # never set: the standby said it was none
                metrics.STANDBY_REPLAY_LAG.remove(self.kind, self.name, part)
        self._m_heartbeat = self._m_lease = None
        if conn is None or lease is None:
            return
        if stopped:
            self._set_state(conn, "stopped")
        self.leases.release(conn, lease)
        logger.info(
            "%s %s: worker %s gave the lease back", self.kind, self.label, self.options.worker_id
        )

    def step(self, conn: psycopg.Connection[Any], stop: threading.Event) -> bool:
        """Read the next batch and apply it; return False when there was nothing to read.

        The one turn of every loop that follows the log: :meth:`run`'s and a worker
        group's. Raises :class:`LeaseLostError` when the lease was lost, and database
        errors.
        """
        self.beat.turn()
        if self._m_heartbeat is not None:
            self._m_heartbeat.set_to_current_time()
        if (
            self.applier.sequenced
            and time.monotonic() - self._retries_checked_at >= self.options.poll.retry_check_s
        ):
            self.process_retries(conn)
            self._retries_checked_at = time.monotonic()
        with self.beat.waiting():  # a read through the pool: the database's time
            read = self._take(self._ahead)
        self._ahead = None
        self._read_at = read.at
        scan = read.scan
        batch_size = self.options.batch_size
        if scan.count < batch_size:
            self.caught_up.set()  # this read reached the head of the log
        if time.monotonic() - self._heartbeat_at > 1.0:
            self._set_state(conn, self.options.state)
            if self._position_moved(conn):
                return True  # an operator moved it (a replay): read from there
        if scan.last is None:
            return False
        if scan.count == batch_size:
            # Catching up: read and decode the next batch while this one is applied.
            if self._reader is None:
                self._reader = ThreadPoolExecutor(
                    1, thread_name_prefix=f"eventkit-read-{self.label}"
                )
            self._ahead = (scan.last, self._reader.submit(self._read, scan.last))
        self._process(conn, read.items, scan.last, stop, self.options.retry)
        return True

    def finish(self, conn: psycopg.Connection[Any]) -> Position:
        """Apply, inside the caller's transaction, every event readable now, from the
        recorded position; return the position reached. A rebuild's last stretch, under
        table locks that readers wait for: a failing event is parked at once."""
        self._close_reader()
        self.position = self.tracking.position(conn, self.name, self.partition.index)
        while True:
            # From the primary, whatever the follower read from before: its locks hold
            # the writers there, and only the primary has every event they committed.
            read = self._read(self.position, self.recorder)
            if read.scan.last is None:
                return self.position
            self._read_at = read.at
            self._process(conn, read.items, read.scan.last, threading.Event(), TRY_ONCE)

    # -- reading ----------------------------------------------------------------------------

    def _close_reader(self) -> None:
        self._ahead = None
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
            self._reader = None

    def _read(self, after: Position, recorder: PostgresEventRecorder | None = None) -> _Read:
        scan = (recorder or self.reader).scan(
            after, self.options.batch_size, self.topics, self.partition
        )
        at = time.time()
        contains = self.partition.contains
        return _Read(scan, [self._decode(n) for n in scan.notifications if contains(n)], at)

    def _take(self, ahead: tuple[Position, Future[_Read]] | None) -> _Read:
        """The batch read ahead if it starts where this follower is now, else a fresh read.

        A follower stopped or failing mid-batch is behind where the read-ahead started;
        that read is dropped (its error too: it is read again from the right place).
        """
        if ahead is not None:
            after, future = ahead
            if after == self.position:
                return future.result()  # its error is this read's error
            if not future.cancel():
                try:
                    future.result()
                except Exception as e:  # read again below, from the right place
                    logger.debug("%s %s: stale read-ahead failed: %s", self.kind, self.label, e)
        return self._read(self.position)

    def _decode(self, n: LoggedNotification) -> _Item:
        try:
            return _Item(n, self.applier.decode(n), None)
        except EventDecodingError as e:
            return _Item(n, None, e)
        except Exception as e:  # an applier's own decoding: still this event's failure
            error = EventDecodingError(
                f"cannot decode stream {n.originator_id} version {n.originator_version} "
                f"(notification {n.id}, topic {n.topic}): {type(e).__name__}: {e}"
            )
            error.__cause__ = e
            return _Item(n, None, error)

    def _position_moved(self, conn: psycopg.Connection[Any]) -> bool:
        """Adopt the recorded position if an operator moved it (``eventkit reset``)."""
        recorded = self.tracking.position(conn, self.name, self.partition.index)
        if recorded == self.position:
            return False
        logger.warning(
            "%s %s: recorded position moved from %s to %s outside this worker; "
            "following from there",
            self.kind,
            self.label,
            self.position,
            recorded,
        )
        self.position = recorded
        return True

    # -- one batch --------------------------------------------------------------------------

    def _process(
        self,
        conn: psycopg.Connection[Any],
        items: list[_Item],
        scanned_to: Position,
        stop: threading.Event,
        retry: RetryPolicy,
    ) -> None:
        """Apply a batch, committing as much as possible per transaction."""
        start, end = 0, len(items)
        while start < len(items) or self.position < scanned_to:
            # The whole rest of the batch moves the position to the end of what was scanned
            # (past events of other types); a prefix moves it to its own last event.
            to = scanned_to if end == len(items) else items[end - 1].notification.position
            try:
                self._commit(conn, items[start:end], start, to)
            except _HandlerFailure as failure:
                if failure.index > start:
                    end = failure.index  # commit what came before the failing event first
                    continue
                if not self._retry_or_park(conn, items[start], failure, stop, retry):
                    return  # stopping: the failing event is tried again on the next start
                start, end = start + 1, len(items)
            else:
                start, end = end, len(items)

    def _commit(
        self, conn: psycopg.Connection[Any], items: Sequence[_Item], offset: int, to: Position
    ) -> None:
        """Apply ``items`` and advance to ``to`` in one transaction, or raise and roll back.

        Several events go through psycopg's pipeline mode, so handlers that only write do
        not wait for a round trip each. In that mode an error may surface at a later
        statement than the one that caused it, so a pipelined batch that fails is rolled
        back and run again statement by statement, which names the failing event exactly.
        """
        if len(items) > 1:
            try:
                with self._reporting_parks():
                    self._commit_once(conn, items, offset, to, deferred=True)
                return
            except TrackingConflictError:
                raise
            except (_HandlerFailure, psycopg.Error):
                if connection_lost(conn):
                    raise
                logger.debug("%s %s: pipelined batch failed; run again", self.kind, self.name)
        with self._reporting_parks():
            self._commit_once(conn, items, offset, to)

    def _commit_once(
        self,
        conn: psycopg.Connection[Any],
        items: Sequence[_Item],
        offset: int,
        to: Position,
        *,
        deferred: bool = False,
    ) -> None:
        applied = parked = 0
        applied_ids: list[int] = []
        with _pipelined_transaction(conn) if deferred else conn.transaction():
            # Read the parked streams unless this follower knows there are none: letters
            # are opened only by the lease holder (this follower), so that stays true until
            # it parks one itself or takes the lease again.
            parked_streams = (
                self.dead_letters.parked_streams(conn, self.name)
                if items and not self._none_parked
                else set()
            )
            context: Context | None = None
            for i, item in enumerate(items):
                n = item.notification
                stream = n.originator_id
                if not isinstance(stream, UUID):
                    stream = UUID(str(stream))
                if stream in parked_streams:
                    self.dead_letters.park(conn, self.name, n, reason="behind", attempts=0)
                    parked += 1
                elif item.decoding_error is not None:
                    self._park(conn, n, reason="undecodable", attempts=1, error=item.decoding_error)
                    parked_streams.add(stream)
                    parked += 1
                else:
                    if context is None:
                        context = Context(
                            conn,
                            self.applier.tables,
                            n,
                            deferred=deferred,
                            statements=self._statements,
                            lease=self.lease,
                        )
                    else:
                        context.notification = n
                    self._apply(conn, item, context, offset + i)
                    applied_ids.append(n.id)
                    applied += 1
            if context is not None:
                self._flush(conn, context, offset + len(items) - 1)
            self._advance(conn, to, applied_ids)
        self.position = max(self.position, to)
        if items:
            self._none_parked = not self.applier.sequenced or (
                not parked_streams and self._own_letters
            )
            self._measure(items)
        on_batch = self.options.on_batch
        if on_batch is not None and items:
            notifications = [i.notification for i in items]
            on_batch(BatchReport(self.name, applied, parked, to, notifications, self._read_at))

    def _flush(self, conn: psycopg.Connection[Any], context: Context, last: int) -> None:
        """Send the statements the batch's handlers queued, on the batch's own pipeline:
        they travel with the fence, the position's update and ``COMMIT`` (a pipeline of
        their own, ``Context.flush``, waited for their results first, one more round trip
        per batch). A statement that fails surfaces here or at the position's update; the
        batch is then run again statement by statement (:meth:`_commit`)."""
        try:
            if context.has_queued():
                context.send_queued(results=False)
        except Exception as e:
            if connection_lost(conn):
                raise
            # A statement or a row-count check of the queued batch failed: the rerun,
            # statement by statement, names the failing event.
            raise _HandlerFailure(last, e) from e

    def _apply(
        self, conn: psycopg.Connection[Any], item: _Item, context: Context, index: int
    ) -> None:
        try:
            self.applier.apply(item.event, context)
        except Exception as e:
            if connection_lost(conn):
                raise  # the connection, not the handler: reconnect and try the batch again
            # Any other error is the event's, a database error of the handler's own
            # statements too (a statement or lock timeout, a value too large to index,
            # psycopg's OperationalError among them): a try, retried, then parked.
            raise _HandlerFailure(index, e) from e

    def _advance(
        self, conn: psycopg.Connection[Any], to: Position, applied: Sequence[int] = ()
    ) -> None:
        """Record ``to``, and fold the ids of the events ``applied`` for the completeness
        audit, in the caller's transaction; the caller sets ``self.position`` once that
        transaction has committed. The lease's fence is sent first and read after the
        position's update: in a pipelined batch both share one round trip."""
        fence = None if self.lease is None else self.leases.send_fence(conn, self.lease)
        if to > self.position:
            self.tracking.advance(
                conn, self.name, self.position, to, self.partition.index, applied=applied
            )
        if fence is not None and self.lease is not None:
            self.leases.check_fence(fence, self.lease, self.partition.count)

    def _fence(self, conn: psycopg.Connection[Any]) -> None:
        """Check the lease inside the caller's transaction (see :mod:`infrastructure.leases`)."""
        if self.lease is not None:
            self.leases.fence(conn, self.lease, self.partition.count)

    def _measure(self, items: Sequence[_Item]) -> None:
        """Count a committed batch; observe commit-to-processed latency of at most 100 of
        its events, evenly spread (observing every event of a catch-up batch of thousands
        would cost more than the batch's own bookkeeping)."""
        self._m_batches.inc()
        self._m_batch_events.observe(len(items))
        per_type: dict[str, int] = {}
        for item in items:
            topic = item.notification.topic
            per_type[topic] = per_type.get(topic, 0) + 1
        for topic, count in per_type.items():
            self._processed(topic).inc(count)
        if self.applier.observes_latency:
            now = time.time()
            for item in items[:: max(1, len(items) // 100)]:
                self._m_latency.observe(now - item.notification.recorded_at.timestamp())

    # -- failures and dead letters ------------------------------------------------------------

    def _retry_or_park(
        self,
        conn: psycopg.Connection[Any],
        item: _Item,
        failure: _HandlerFailure,
        stop: threading.Event,
        retry: RetryPolicy,
    ) -> bool:
        """Retry one failing event alone with backoff; park it after the last attempt.

        Returns False when asked to stop before the event was applied or parked.
        """
        n = item.notification
        attempt = 1
        self._set_state(
            conn, "failing", f"retrying stream {n.originator_id} v{n.originator_version}"
        )
        while attempt < retry.max_attempts:
            metrics.ERRORS.labels(self.kind, self.name, type(failure.error).__name__).inc()
            metrics.RETRIES.labels(self.kind, self.name).inc()
            logger.warning(
                "%s %s: handler failed on stream %s version %s (notification %s, "
                "attempt %d of %d): %s: %s",
                self.kind,
                self.name,
                n.originator_id,
                n.originator_version,
                n.id,
                attempt,
                retry.max_attempts,
                type(failure.error).__name__,
                failure.error,
                extra={**self._fields(n), "error_class": type(failure.error).__name__},
            )
            if self._pause(conn, stop, retry.delay(attempt)):
                return False
            attempt += 1
            try:
                self._commit(conn, [item], 0, n.position)
                self._set_state(conn, self.options.state)
                return True
            except _HandlerFailure as again:
                failure = again
        with self._reporting_parks(), conn.transaction():
            self._park(
                conn,
                n,
                reason="failed",
                attempts=attempt,
                error=failure.error,
                tb=failure.traceback,
            )
            self._advance(conn, n.position)
        self.position = max(self.position, n.position)
        self._set_state(conn, self.options.state)
        return True

    def _pause(self, conn: psycopg.Connection[Any], stop: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` (a retry's backoff), renewing a standalone follower's lease;
        return True when asked to stop meanwhile."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if stop.wait(min(left, self.leases.ttl_s / 3)):
                return True
            if self._standalone:
                self._renew_if_due(conn)
        return stop.is_set()

    def _park(
        self,
        conn: psycopg.Connection[Any],
        n: LoggedNotification,
        *,
        reason: str,
        attempts: int,
        error: BaseException,
        tb: str | None = None,
    ) -> None:
        """Park ``n`` in the caller's transaction, which runs under
        :meth:`_reporting_parks`: the letter is logged and counted once that commits."""
        self._none_parked = not self.applier.sequenced
        dead_letter_id = self.dead_letters.park(
            conn,
            self.name,
            n,
            reason=reason,
            attempts=attempts,
            error=error,
            traceback=tb or "".join(traceback.format_exception(error)),
        )
        self._parked.append(_Parked(dead_letter_id, n, reason, attempts, error))

    @contextlib.contextmanager
    def _reporting_parks(self) -> Iterator[None]:
        """Log and count the dead letters parked in the block once it has committed (put
        it outside the block's transaction and pipeline); forget them if it raised: the
        transaction rolled back, with its letters. A batch fenced off by a lost lease says
        so, and names no dead letter."""
        self._parked = []
        try:
            yield
        except BaseException as e:
            rolled_back, self._parked = self._parked, []
            if rolled_back and isinstance(e, LeaseLostError):
                logger.warning(
                    "%s %s: lost its lease before its transaction committed; nothing of it "
                    "was written, so the %d dead letter(s) it would have parked (stream %s "
                    "version %s first) were not parked; the lease's new owner applies or "
                    "parks those events",
                    self.kind,
                    self.label,
                    len(rolled_back),
                    rolled_back[0].notification.originator_id,
                    rolled_back[0].notification.originator_version,
                    extra=self._fields(rolled_back[0].notification),
                )
            raise
        committed, self._parked = self._parked, []
        for p in committed:
            self._report_park(p)

    def _report_park(self, p: _Parked) -> None:
        n = p.notification
        metrics.DEAD_LETTERS_PARKED.labels(self.kind, self.name, p.reason).inc()
        logger.error(
            "%s %s parked stream %s version %s (notification %s, %s) as dead letter "
            "#%s after %s attempt(s): %s: %s",
            self.kind,
            self.name,
            n.originator_id,
            n.originator_version,
            n.id,
            n.topic,
            p.dead_letter_id,
            p.attempts,
            type(p.error).__name__,
            p.error,
            extra={**self._fields(n), "error_class": type(p.error).__name__},
        )

    def _processed(self, topic: str) -> Any:
        child = self._m_processed.get(topic)
        if child is None:
            child = self._m_processed[topic] = metrics.EVENTS_PROCESSED.labels(
                self.kind, self.name, str(self.partition.index), topic
            )
        return child

    def _fields(self, n: LoggedNotification | None = None) -> dict[str, object]:
        """Structured log fields (``--log-format json``): the consumer, and the event."""
        fields: dict[str, object] = {
            "consumer": self.name,
            "kind": self.kind,
            "partition": self.partition.index,
        }
        if n is None:
            fields["position"] = str(self.position)
        else:
            fields.update(
                position=str(n.position), stream=str(n.originator_id), version=n.originator_version
            )
        return fields

    def process_retries(self, conn: psycopg.Connection[Any]) -> None:
        """Reprocess, in order, the streams of dead letters an operator asked to retry
        (``eventkit dlq retry``) and release them, or park them again with the new error."""
        requested = self.dead_letters.retry_requested(conn, self.name, self.partition)
        if not self.partition.whole and callable(self.partition.key) and requested:
            # A key function: keep the letters of this partition's events.
            with self.beat.waiting():
                notifications = self.recorder.notifications([d.notification_id for d in requested])
            mine = {n.id for n in notifications if self.partition.contains(n)}
            requested = [d for d in requested if d.notification_id in mine]
        for stream, letters in groupby(requested, key=lambda d: d.originator_id):
            self._retry_stream(conn, stream, list(letters))

    def _retry_stream(
        self, conn: psycopg.Connection[Any], stream: UUID, letters: list[DeadLetter]
    ) -> None:
        self._none_parked = False  # read the parked streams again after this
        with self.beat.waiting():
            found = self.recorder.notifications([d.notification_id for d in letters])
        by_id = {n.id: n for n in found}
        try:
            with conn.transaction():
                context: Context | None = None
                for index, letter in enumerate(letters):
                    item = self._decode(by_id[letter.notification_id])
                    if item.decoding_error is not None:
                        raise _HandlerFailure(index, item.decoding_error)
                    if context is None:
                        context = Context(
                            conn,
                            self.applier.tables,
                            item.notification,
                            statements=self._statements,
                            lease=self.lease,
                        )
                    context.notification = item.notification
                    self._apply(conn, item, context, index)
                self.dead_letters.mark(conn, [d.dead_letter_id for d in letters], "retried")
                self.tracking.fold(
                    conn, self.name, self.partition.index, [d.notification_id for d in letters]
                )
                self._fence(conn)
        except _HandlerFailure as failure:
            head = letters[failure.index]
            with self._reporting_parks(), conn.transaction():
                self._park(
                    conn,
                    by_id[head.notification_id],
                    reason="failed",
                    attempts=1,
                    error=failure.error,
                    tb=failure.traceback,
                )
                # Every letter of the stream stays parked, in order: the ones before the
                # failing letter were applied only in the transaction that rolled back.
                others = [d.dead_letter_id for d in letters if d is not head]
                self.dead_letters.mark(conn, others, "parked")
            logger.error(
                "%s %s: retry of stream %s failed again at version %s; still parked",
                self.kind,
                self.name,
                stream,
                head.originator_version,
            )
            return
        logger.info(
            "%s %s: retried %d dead letter(s) of stream %s; stream released",
            self.kind,
            self.name,
            len(letters),
            stream,
        )

    # -- state --------------------------------------------------------------------------------

    def _set_state(
        self, conn: psycopg.Connection[Any], state: str, detail: str | None = None
    ) -> None:
        """Record what this partition's follower is doing (``eventkit status``); also its
        heartbeat there. A follower that reads a standby says so, with the standby's replay
        lag (read there once a heartbeat: a standby that fails is this loop's failure, as a
        failed scan is)."""
        self._heartbeat_at = time.monotonic()
        if detail is None and self.reader is not self.recorder and state != "stopped":
            lag = self.reader.replay_lag()
            if lag is not None:
                metrics.STANDBY_REPLAY_LAG.labels(
                    self.kind, self.name, str(self.partition.index)
                ).set(lag)
            detail = (
                "reads the log from a standby, replay lag unknown: that server is not in recovery"
                if lag is None
                else f"reads the log from a standby, replay lag {lag:.2f} s"
            )
        conn.execute(
            f'INSERT INTO "{self.options.schema}".consumer_workers '
            "(consumer, partition, state, worker_id, heartbeat_at, detail) "
            "VALUES (%s, %s, %s, %s, clock_timestamp(), %s) "
            "ON CONFLICT (consumer, partition) DO UPDATE SET "
            "state = excluded.state, worker_id = excluded.worker_id, "
            "heartbeat_at = excluded.heartbeat_at, detail = excluded.detail",
            (self.name, self.partition.index, state, self.options.worker_id, detail),
        )

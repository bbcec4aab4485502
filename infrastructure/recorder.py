"""The event store's recorder: eventsourcing's ``ApplicationRecorder`` on PostgreSQL, without a
global lock.

Writers append with one statement per save: a multi-row ``INSERT`` for small saves, ``COPY``
for large ones. No table lock and no ``NOTIFY`` in the write transaction, so concurrent
writers commit in parallel and PostgreSQL can group their commits.

Readers use :meth:`PostgresEventRecorder.read_notifications`, which returns only rows whose
writing transaction has ended, in (transaction id, notification id) order. Why that never
lets a reader pass an event that commits later is argued in docs/architecture.md and
checked by tests/integration/test_gap_safety.py.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import psycopg
import psycopg_pool
import pydantic_core
from eventsourcing.persistence import ApplicationRecorder, Notification, StoredEvent, Subscription
from psycopg import pq, sql
from psycopg.types.json import Jsonb

from eventkit.domain.application import AlreadyRecordedError
from eventkit.domain.metadata import Metadata, current_metadata
from eventkit.infrastructure import metrics
from eventkit.infrastructure.appending import (
    COLUMNS,
    METADATA_COLUMNS,
    AppendOptions,
    AppendStatements,
    Row,
)
from eventkit.infrastructure.database import TRANSIENT_ERRORS, retry_transient
from eventkit.infrastructure.errors import (
    ConcurrencyError,
    DatabaseUnavailableError,
    EventEncodingError,
    PersistenceError,
    UnsupportedFollowerError,
)
from eventkit.infrastructure.groupcommit import GroupCommit
from eventkit.infrastructure.log import (
    LoggedNotification,
    OpenTransaction,
    Position,
    StartFrom,
    assemble,
)
from eventkit.infrastructure.partitions import Partition

if TYPE_CHECKING:  # imported at run time only with tracing on: it imports OpenTelemetry
    from eventkit.infrastructure.tracing import Tracing

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Saves of up to this many events use one multi-row INSERT; larger ones use COPY, which is
#: several times faster per row but needs the notification ids allocated first.
COPY_THRESHOLD = 32
_APPEND_ATTEMPTS = 5
_DUPLICATE_KEY = re.compile(r"=\(([^,]+), (\d+)\) already exists")

_NOTIFICATION_COLUMNS = (
    "originator_id, originator_version, topic, state, notification_id, "
    "transaction_id::text::bigint, recorded_at, correlation_id, causation_id, headers"
)
# Rows whose writing transaction id is below the log's horizon are final: committed (and
# visible) or rolled back, and no transaction still running or yet to start can append
# below it. The horizon is the snapshot's xmin, or, once that holds a committed row back,
# the oldest transaction that can still write to the log (infrastructure/sql/
# 0009_log_writers.sql; the argument is in docs/architecture.md). A scalar subquery, so
# it is computed once per statement, with the statement's snapshot.
# https://www.postgresql.org/docs/current/functions-info.html#FUNCTIONS-PG-SNAPSHOT-PARTS
_SETTLED = "transaction_id < (SELECT {log_horizon}())"
#: The database function that computes the horizon: ``log_horizon`` (the snapshot's xmin,
#: or ``log_writer_horizon`` once that holds a committed row back for 10 ms). Tests read
#: through ``log_writer_horizon`` alone as well, to work that path hard.
HORIZON_FUNCTION = "log_horizon"


@dataclass(frozen=True)
class Scan:
    """What :meth:`PostgresEventRecorder.scan` found."""

    notifications: list[LoggedNotification]
    #: The position of the last notification scanned (of any type), None if none was.
    last: Position | None
    #: How many notifications were scanned (of any type).
    count: int


class PostgresEventRecorder(ApplicationRecorder):
    """Records stored events in ``{schema}.stored_events`` and reads the notification log."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        schema: str,
        *,
        notify_channel: str | None = None,
        tracing: bool = False,
        group_commit: bool = False,
    ) -> None:
        """``tracing``: a span per append, its context stored with the events
        (:mod:`eventkit.infrastructure.tracing`, imported only then). ``group_commit``:
        concurrent saves of this recorder appended together
        (:mod:`eventkit.infrastructure.groupcommit`)."""
        self.pool = pool
        self.schema = schema
        self.notify_channel = notify_channel
        self._tracing: Tracing | None = None
        if tracing:
            from eventkit.infrastructure.tracing import tracing as process_tracing

            self._tracing = process_tracing()
        table = sql.Identifier(schema, "stored_events")
        self._table = table
        self._horizon = sql.Identifier(schema, HORIZON_FUNCTION)
        self._sequence = f"{schema}.stored_events_notification_id_seq"
        self._copy = sql.SQL("COPY {} (notification_id, {}) FROM STDIN (FORMAT BINARY)").format(
            table, sql.SQL(COLUMNS)
        )
        self._copy_metadata = sql.SQL(
            "COPY {} (notification_id, {}, {}) FROM STDIN (FORMAT BINARY)"
        ).format(table, sql.SQL(COLUMNS), sql.SQL(METADATA_COLUMNS))
        self._copy_identity = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            table, sql.SQL(COLUMNS)
        )
        self._copy_identity_metadata = sql.SQL(
            "COPY {} ({}, {}) FROM STDIN (FORMAT BINARY)"
        ).format(table, sql.SQL(COLUMNS), sql.SQL(METADATA_COLUMNS))
        self._copied = sql.SQL(
            "SELECT notification_id FROM {} WHERE transaction_id = pg_current_xact_id()"
            " ORDER BY notification_id DESC LIMIT %s"
        ).format(table)
        self._keys = sql.Identifier(schema, "idempotency_keys")
        self._select_events = sql.SQL(
            "SELECT originator_id, originator_version, topic, state FROM {} "
            "WHERE originator_id = %s"
        ).format(table)
        self._read_after = sql.SQL(
            "SELECT {} FROM {} e WHERE (transaction_id, notification_id) > (%s::text::xid8, %s) "
            "AND " + _SETTLED
        ).format(sql.SQL(_NOTIFICATION_COLUMNS), table, log_horizon=self._horizon)
        # A pool whose connections must not hold prepared statements (see
        # Settings.prepared_statements) appends through psycopg's cursor instead.
        kwargs = pool.kwargs if isinstance(pool.kwargs, dict) else {}
        prepared = "prepare_threshold" not in kwargs or kwargs["prepare_threshold"] is not None
        self._statements = AppendStatements(schema, prepared=prepared)
        self._scans: dict[str | None, bytes] = {}
        #: Saves without metadata or key that arrive together go as one INSERT (see
        #: infrastructure/groupcommit.py); None: every save appends on its own.
        self.group_commit: GroupCommit[Row] | None = None
        if group_commit:
            self.group_commit = GroupCommit(
                lambda rows: self._append(rows, None),
                self._after_group,
                max_rows=COPY_THRESHOLD,
            )

    def _retry(self, operation: Callable[[], T], *, what: str) -> T:
        return retry_transient(
            operation, what=what, on_failure=self._check_pool, within_s=self.pool.timeout
        )

    def _check_pool(self) -> None:
        # After a restart or failover every idle connection is dead: drop them all at once.
        try:
            self.pool.check()
        except psycopg.Error:  # pragma: no cover - the check itself hit the outage
            logger.warning("could not check the pool's connections", exc_info=True)

    # -- writing -------------------------------------------------------------------------

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        """Append ``stored_events`` atomically; return their notification ids, in order.

        Raises :class:`ConcurrencyError` when any (stream, version) is already recorded, and
        then nothing of the save is written.
        """
        if not stored_events:
            return []
        started = time.perf_counter()
        meta = current_metadata()
        key = kwargs.get("idempotency_key")
        if self._tracing is None:
            options = None if meta is None and key is None else _options(meta, key)
            ids = self._insert(stored_events, options)
        else:
            streams = list(dict.fromkeys(str(e.originator_id) for e in stored_events))
            correlation_id = None if meta is None else meta.correlation_id
            with self._tracing.append(len(stored_events), streams, correlation_id) as carrier:
                ids = self._insert(stored_events, _options(meta, key, carrier))
        metrics.APPEND_LATENCY.observe(time.perf_counter() - started)
        metrics.EVENTS_APPENDED.inc(len(ids))
        return ids

    def _insert(
        self, stored_events: Sequence[StoredEvent], options: AppendOptions | None
    ) -> list[int]:
        rows = [_row(e) for e in stored_events]
        if options is None and self.group_commit is not None:
            return self.group_commit.append(rows)
        return self._insert_rows(rows, options)

    def _after_group(self, rows: Sequence[Row], error: BaseException | None) -> list[int]:
        """A save's own append, alone or after its group failed with ``error``.

        A group's statement is atomic: when the server refused it, none of it was written
        and the save appends again on its own (a conflict then fails this save alone).
        When the group's outcome is unknown (the connection was lost), the save first looks
        for its rows, as a save alone does after a lost connection.
        """
        if isinstance(error, psycopg_pool.PoolTimeout):
            # The group waited the writer's whole bound for a connection and sent nothing.
            raise DatabaseUnavailableError(
                f"append of {len(rows)} event(s) to stream(s) {_streams(list(rows))} got no "
                f"connection within {self.pool.timeout:g} s (EVENTKIT_WRITE_TIMEOUT): the "
                f"database is unavailable; nothing was written; last error: {error}"
            ) from error
        if error is not None and not _server_refused(error):
            found = self._counted_find(list(rows))
            if found is not None:
                return found
        return self._insert_rows(list(rows), None)

    def _counted_find(self, rows: list[Row]) -> list[int] | None:
        """:meth:`_find_appended`, its conflict counted as one."""
        try:
            return self._find_appended(rows)
        except ConcurrencyError:
            metrics.APPEND_CONFLICTS.inc()
            raise

    def _insert_rows(self, rows: list[Row], options: AppendOptions | None) -> list[int]:
        key = None if options is None else options.idempotency_key
        delay = 0.05
        # The writer's bound (EVENTKIT_WRITE_TIMEOUT, the pool's timeout): waits for a
        # connection and retries together.
        within_s = self.pool.timeout
        deadline = time.monotonic() + within_s
        for attempt in range(1, _APPEND_ATTEMPTS + 1):
            try:
                return self._append(rows, options, max(0.01, deadline - time.monotonic()))
            except psycopg.errors.UniqueViolation as e:
                recorded = None if key is None else self.appended_with(key)
                if key is not None and recorded is not None:
                    raise AlreadyRecordedError(key, recorded) from e
                metrics.APPEND_CONFLICTS.inc()
                raise self._conflict(e, rows) from e
            except TRANSIENT_ERRORS as e:
                if isinstance(e, psycopg_pool.PoolTimeout):
                    pass  # no connection: nothing was sent
                elif key is not None and not _rolled_back(e):
                    # The key commits with the events: recorded means this append, or an
                    # earlier one with the same key, committed; absent means none did.
                    recorded = self.appended_with(key)
                    if recorded is not None:
                        if self._is_appended(rows, recorded):
                            return recorded
                        raise AlreadyRecordedError(key, recorded) from e
                elif not _rolled_back(e):
                    # The connection may have dropped after the commit was sent: look
                    # before writing again, or a retry would report a false conflict.
                    found = self._counted_find(rows)
                    if found is not None:
                        return found
                # else the server rolled the save back (a deadlock with a writer inserting
                # the same (stream, version) keys in another order, or a serialisation
                # failure): nothing was written, and the next attempt either succeeds or
                # meets the other writer's committed rows as a ConcurrencyError.
                if attempt == _APPEND_ATTEMPTS or time.monotonic() + delay >= deadline:
                    raise DatabaseUnavailableError(
                        f"append of {len(rows)} event(s) to stream(s) {_streams(rows)} failed "
                        f"within {within_s:g} s (EVENTKIT_WRITE_TIMEOUT; {attempt} "
                        f"attempt(s)): the database is unavailable; nothing was written; "
                        f"last error: {type(e).__name__}: {e}"
                    ) from e
                logger.warning("append failed (attempt %d), retrying: %s", attempt, e)
                self._check_pool()
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _append(
        self,
        rows: list[tuple[UUID, int, str, bytes]],
        options: AppendOptions | None,
        timeout_s: float | None = None,
    ) -> list[int]:
        # getconn/putconn rather than pool.connection(): its ``with conn`` adds a commit
        # call (a no-op in autocommit) and a context manager, ~10% of a one-event save's
        # client CPU. The connection is in autocommit; putconn discards a broken one.
        conn = self.pool.getconn(timeout_s)
        try:
            if self.notify_channel is None:
                return self._write(conn, rows, options)
            with conn.transaction():
                ids = self._write(conn, rows, options)
                conn.execute("SELECT pg_notify(%s, '')", (self.notify_channel,))
                return ids
        finally:
            self.pool.putconn(conn)

    def _write(
        self,
        conn: psycopg.Connection[Any],
        rows: list[tuple[UUID, int, str, bytes]],
        options: AppendOptions | None = None,
    ) -> list[int]:
        # One statement, so in autocommit mode the save is one transaction and one round trip.
        if len(rows) <= COPY_THRESHOLD:
            ids = self._statements.insert(conn, rows, options)
        elif options is not None and options.idempotency_key is not None:
            with conn.transaction():  # the COPY and its key commit together
                ids = self._copy_rows(conn, rows, options)
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (idempotency_key, notification_ids) VALUES (%s, %s)"
                    ).format(self._keys),
                    (options.idempotency_key, sorted(ids)),
                )
        else:
            ids = self._copy_rows(conn, rows, options)
        if len(ids) != len(rows):
            raise PersistenceError(f"appended {len(rows)} events but got {len(ids)} ids back")
        return ids

    def _is_appended(self, rows: list[tuple[UUID, int, str, bytes]], ids: list[int]) -> bool:
        """Whether ``rows`` are in the log, as they are, under ``ids``."""
        try:
            return self._find_appended(rows) == ids
        except ConcurrencyError:  # other content at those versions: not ours
            return False

    def appended_with(self, idempotency_key: str) -> list[int] | None:
        """The notification ids of the append that recorded ``idempotency_key``, or None
        when no append recorded it."""
        statement = sql.SQL("SELECT notification_ids FROM {} WHERE idempotency_key = %s").format(
            self._keys
        )

        def read() -> list[int] | None:
            with self.pool.connection() as conn:
                row = conn.execute(statement, (idempotency_key,)).fetchone()
            return None if row is None else list(row[0])

        return self._retry(read, what=f"looking up idempotency key {idempotency_key!r}")

    def _copy_rows(
        self,
        conn: psycopg.Connection[Any],
        rows: list[tuple[UUID, int, str, bytes]],
        options: AppendOptions | None,
    ) -> list[int]:
        """Stream the rows in binary COPY; return their ids.

        On a connection with no transaction open, the ids are drawn first (sequence values
        are not transactional, so a rolled back COPY only leaves a gap), in a statement
        and transaction of their own, and the COPY is its own transaction, a log append
        from its start. In a transaction, drawing them first would give the transaction
        its id before its first append (``nextval`` takes one each time it logs the
        sequence), and the log refuses such an append (infrastructure/sql/
        0009_log_writers.sql): the rows take their ids from the column's identity, in
        order, and are read back (the transaction's last ids are this COPY's).
        """
        meta = options is not None and options.has_metadata
        types = ["uuid", "int8", "text", "bytea"]
        extra: tuple[Any, ...] = ()
        if options is not None and meta:
            types += ["text", "text", "jsonb"]
            headers = options.headers
            extra = (
                options.correlation_id,
                options.causation_id,
                # Already JSON text: wrapped as is (binary COPY adds jsonb's version).
                None if headers is None else Jsonb(headers, dumps=_as_is),
            )
        on_its_own = conn.autocommit and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        with conn.cursor() as cur:
            if not on_its_own:
                identity = self._copy_identity_metadata if meta else self._copy_identity
                with cur.copy(identity) as copy:
                    copy.set_types(types)
                    for row in rows:
                        copy.write_row((*row, *extra))
                cur.execute(self._copied, (len(rows),))
                return sorted(r[0] for r in cur.fetchall())
            cur.execute(
                "SELECT nextval(%s::regclass) FROM generate_series(1, %s)",
                (self._sequence, len(rows)),
            )
            ids: list[int] = [r[0] for r in cur.fetchall()]
            with cur.copy(self._copy_metadata if meta else self._copy) as copy:
                copy.set_types(["int8", *types])
                for notification_id, row in zip(ids, rows, strict=True):
                    copy.write_row((notification_id, *row, *extra))
        return ids

    def _conflict(
        self, error: psycopg.errors.UniqueViolation, rows: list[tuple[UUID, int, str, bytes]]
    ) -> PersistenceError:
        """The ConcurrencyError of a save that hit the log's (stream, version) key.

        Recognised by SQLSTATE (the exception class) and the constraint's name, never by
        the message: DETAIL, which names the key, is left out for a role under row-level
        security and translated under another ``lc_messages``. When DETAIL is there it says
        which row conflicted; otherwise the save's keys are looked up.
        """
        constraint = error.diag.constraint_name
        if constraint is not None and constraint != "stored_events_pkey":
            return PersistenceError(
                f"append to {self.schema}.stored_events failed on constraint {constraint}: {error}"
            )
        match = _DUPLICATE_KEY.search(error.diag.message_detail or "")
        if match is not None:
            originator_id, version = match[1], int(match[2])
        else:
            found = self._retry(
                lambda: self._recorded_keys(rows),
                what="finding which version of the save was recorded already",
            )
            # Nothing found: the row we collided with belonged to a transaction that
            # has rolled back since; still a conflict (our save was rejected whole).
            originator_id, version = found or (str(rows[0][0]), rows[0][1])
        return self._conflict_at(originator_id, version, rows)

    def _conflict_at(
        self, originator_id: str, version: int, rows: list[tuple[UUID, int, str, bytes]]
    ) -> ConcurrencyError:
        """The ConcurrencyError of a save whose ``version`` of ``originator_id`` another
        writer recorded."""
        versions = [r[1] for r in rows if str(r[0]) == originator_id] or [version]
        current = self._retry(
            lambda: self._current_version(originator_id),
            what=f"reading the version of stream {originator_id}",
        )
        return ConcurrencyError(
            originator_id=originator_id,
            conflicting_version=version,
            current_version=current,
            appended_versions=(min(versions), max(versions)),
            num_events=len(rows),
        )

    def _recorded_keys(self, rows: list[tuple[UUID, int, str, bytes]]) -> tuple[str, int] | None:
        """The first of the save's (stream, version) keys that the log holds already."""
        with self.pool.connection() as conn:
            row = conn.execute(
                sql.SQL(
                    "SELECT k.originator_id::text, k.originator_version FROM unnest(%s::uuid[],"
                    " %s::bigint[]) WITH ORDINALITY AS k(originator_id, originator_version, n)"
                    " WHERE EXISTS (SELECT 1 FROM {} e WHERE e.originator_id = k.originator_id"
                    " AND e.originator_version = k.originator_version) ORDER BY k.n LIMIT 1"
                ).format(self._table),
                ([r[0] for r in rows], [r[1] for r in rows]),
            ).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def _current_version(self, originator_id: str) -> int | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                sql.SQL("SELECT max(originator_version) FROM {} WHERE originator_id = %s").format(
                    self._table
                ),
                (originator_id,),
            ).fetchone()
        return None if row is None else row[0]

    def _find_appended(self, rows: list[tuple[UUID, int, str, bytes]]) -> list[int] | None:
        """After a lost connection: the ids if the append committed, None if none of its
        (stream, version) keys is recorded (it did not commit: write it again).

        Raises :class:`ConcurrencyError` when another writer's events hold some of those
        keys: a commit is atomic, so had this append committed, every one of its rows would
        be there with its content. The outcome is known, a plain conflict, which the
        application retries like any other.
        """
        statement = sql.SQL(
            "SELECT e.notification_id, e.topic, e.state, k.originator_id::text,"
            " k.originator_version FROM unnest(%s::uuid[], %s::bigint[]) "
            "WITH ORDINALITY AS k(originator_id, originator_version, n) "
            "JOIN {} e USING (originator_id, originator_version) ORDER BY k.n"
        ).format(self._table)

        def look() -> list[tuple[int, str, bytes, str, int]]:
            with self.pool.connection() as conn:
                return conn.execute(
                    statement, ([r[0] for r in rows], [r[1] for r in rows])
                ).fetchall()

        found = self._retry(look, what="checking whether an interrupted append committed")
        if not found:
            return None
        if len(found) == len(rows) and all(
            (f[1], bytes(f[2])) == (r[2], r[3]) for f, r in zip(found, rows, strict=True)
        ):
            return [f[0] for f in found]
        ours = {(str(r[0]), r[1]): (r[2], r[3]) for r in rows}
        theirs = next((f for f in found if ours[(f[3], f[4])] != (f[1], bytes(f[2]))), found[0])
        raise self._conflict_at(theirs[3], theirs[4], rows)

    # -- reading one stream ----------------------------------------------------------------

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """Return the events of one stream, by version."""
        statement, params = stream_query(
            self._select_events, originator_id, gt=gt, lte=lte, desc=desc, limit=limit
        )

        def select() -> list[StoredEvent]:
            with self.pool.connection() as conn, conn.cursor(binary=True) as cur:
                cur.execute(statement, params)
                return [StoredEvent(r[0], r[1], r[2], r[3]) for r in cur.fetchall()]

        return self._retry(select, what=f"reading stream {originator_id}")

    # -- reading the notification log ------------------------------------------------------

    def read_notifications(
        self, after: Position, limit: int, topics: Sequence[str] = ()
    ) -> list[LoggedNotification]:
        """Return up to ``limit`` notifications after ``after``, in log order.

        Only notifications whose transaction has ended are returned, so a notification can
        never appear later at or before the last one returned: a follower that records the
        position of the last notification it handled misses nothing and sees nothing twice.
        ``topics`` restricts the result to those event types (the position still advances
        only through what is returned).
        """
        statement = self._read_after
        params: list[Any] = [str(after.transaction_id), after.notification_id]
        if topics:
            statement += sql.SQL(" AND topic = ANY(%s)")
            params.append(list(topics))
        # e.transaction_id, not transaction_id: that name is also the output column of
        # transaction_id::text::bigint, which the index cannot order (a sort of every row
        # after the position instead of an index scan).
        statement += sql.SQL(" ORDER BY e.transaction_id, e.notification_id LIMIT %s")
        params.append(limit)

        def read() -> list[LoggedNotification]:
            with self.pool.connection() as conn, conn.cursor(binary=True) as cur:
                cur.execute(statement, params)
                return [_logged(r) for r in cur.fetchall()]

        return self._retry(read, what=f"reading the notification log after {after}")

    def scan(
        self,
        after: Position,
        limit: int,
        topics: Sequence[str],
        partition: Partition | None = None,
    ) -> Scan:
        """Read up to ``limit`` notifications after ``after``; return those of ``topics``
        (and of ``partition``, where its key is computed in SQL). The read of every
        follower (:mod:`projections.follower`), which does everything else of following.

        Also returns the position of the last notification scanned, matching or not, so a
        follower of rare event types moves past the rest of the log instead of scanning it
        again on every poll, and how many were scanned (fewer than ``limit``: the reader
        has reached the head). Payloads are fetched only for the matching rows.
        """
        predicate = None if partition is None else partition.predicate("e")
        key = None if predicate is None or partition is None else str(partition.key)
        statement = self._scans.get(key)
        if statement is None:  # composed once per partition key: this runs every poll
            statement = self._scans[key] = self._scan_statement(predicate)
        params: list[Any] = [list(topics)]
        if predicate is not None:
            params += predicate[1]
        params += [str(after.transaction_id), after.notification_id, limit]

        def read() -> Scan:
            with self.pool.connection() as conn, conn.cursor(binary=True) as cur:
                # Never prepared: a generic plan, made without the position and the
                # limit, need not walk the log-order index (an earlier form of this
                # query got a sequential scan that way); the per-call plan does.
                cur.execute(statement, params, prepare=False)
                rows = cur.fetchall()
            if not rows:
                return Scan([], None, 0)
            matching = [
                assemble(
                    originator_id=r[2],
                    originator_version=r[3],
                    topic=r[4],
                    state=r[5],
                    id=r[1],
                    transaction_id=r[0],
                    recorded_at=r[6],
                    correlation_id=r[7],
                    causation_id=r[8],
                    headers=r[9],
                )
                for r in rows
                if r[2] is not None
            ]
            return Scan(matching, Position(rows[-1][0], rows[-1][1]), len(rows))

        return self._retry(read, what=f"scanning the notification log after {after}")

    def _scan_statement(self, predicate: tuple[sql.Composable, list[Any]] | None) -> bytes:
        """The statement of :meth:`scan`, for one partition predicate (or none)."""
        # One index scan in log order. Non-matching rows come back with their position
        # only: CASE leaves their payload unread (and a toasted one undecompressed). An
        # earlier form joined the scanned positions back to the table for the matching
        # rows' payloads; from about 2,000 rows per batch PostgreSQL hashed that join
        # over a sequential scan of the whole log, every batch (measured: 17 ms per
        # batch at 200,000 events, growing with the log).
        wanted: sql.Composable = sql.SQL("e.topic = ANY(%s)")
        if predicate is not None:
            wanted = sql.SQL("{} AND {}").format(wanted, predicate[0])
        columns = sql.SQL(", ").join(
            sql.SQL("CASE WHEN s.wanted THEN s.{} END").format(sql.Identifier(c))
            for c in (
                "originator_id",
                "originator_version",
                "topic",
                "state",
                "recorded_at",
                "correlation_id",
                "causation_id",
                "headers",
            )
        )
        return (
            sql.SQL(
                "SELECT s.transaction_id::text::bigint, s.notification_id, {columns} FROM ("
                " SELECT e.transaction_id, e.notification_id, e.originator_id,"
                " e.originator_version, e.topic, e.state, e.recorded_at, e.correlation_id,"
                " e.causation_id, e.headers, {wanted} AS wanted"
                " FROM {t} e WHERE (e.transaction_id, e.notification_id) > (%s::text::xid8, %s)"
                " AND " + _SETTLED + " ORDER BY e.transaction_id, e.notification_id LIMIT %s) s"
                " ORDER BY s.transaction_id, s.notification_id"
            )
            .format(columns=columns, wanted=wanted, t=self._table, log_horizon=self._horizon)
            .as_bytes(None)
        )

    def notifications(self, notification_ids: Sequence[int]) -> list[LoggedNotification]:
        """The notifications with these ids, in log order (dead-letter retries)."""
        statement = sql.SQL(
            "SELECT {} FROM {} e WHERE notification_id = ANY(%s) "
            "ORDER BY e.transaction_id, e.notification_id"
        ).format(sql.SQL(_NOTIFICATION_COLUMNS), self._table)

        def read() -> list[LoggedNotification]:
            with self.pool.connection() as conn, conn.cursor(binary=True) as cur:
                cur.execute(statement, (list(notification_ids),))
                return [_logged(r) for r in cur.fetchall()]

        return self._retry(read, what="reading notifications by id")

    def notification_query(self, parameter: sql.Composable | None = None) -> sql.Composed:
        """``SELECT`` of one notification by id (``parameter``, ``%s`` by default), for
        callers that read it in a statement of theirs (a reaction's look); turn the row
        into a notification with :func:`logged_notification`."""
        return sql.SQL("SELECT {} FROM {} WHERE notification_id = {}").format(
            sql.SQL(_NOTIFICATION_COLUMNS), self._table, parameter or sql.Placeholder()
        )

    def head(self) -> Position | None:
        """The position of the last notification a reader can see now."""
        return self._last(settled=True, what="reading the head of the notification log")

    def replay_lag(self) -> float | None:
        """How far the server this recorder reads is behind its primary, in seconds: a
        hot standby's replay lag (0 once it has replayed all the WAL it received; the age
        of the last transaction it replayed otherwise, by its own clock); None when the
        server is not a standby. What ``eventkit status`` shows for a consumer whose
        followers read a standby (``EVENTKIT_READ_URL``)."""

        def read() -> float | None:
            with self.pool.connection() as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), CASE"
                    " WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()"
                    " THEN 0.0"
                    " ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())"
                    "::float8 END"
                ).fetchone()
            if row is None or not row[0]:
                return None
            return max(0.0, float(row[1] or 0.0))

        return self._retry(read, what="reading the standby's replay lag")

    def last_recorded(self) -> Position | None:
        """The log position of the last event committed so far, settled or not.

        Unlike :meth:`head`, this counts events a reader cannot see yet because an older
        transaction (of any kind, anywhere in the cluster) is still open. Once writers have
        stopped, a follower whose position reaches it has handled every event; ``head`` can
        be reached while such a transaction holds the last events back.
        """
        return self._last(settled=False, what="reading the last recorded position of the log")

    def _last(self, *, settled: bool, what: str) -> Position | None:
        statement = sql.SQL(
            "SELECT transaction_id::text::bigint, notification_id FROM {} e"
            + (" WHERE " + _SETTLED if settled else "")
            # e.: the output column of the same name is the bigint cast, which no index
            # orders (a scan of the whole log, measured 35 ms on 200,000 events against
            # 0.26 ms)
            + " ORDER BY e.transaction_id DESC, e.notification_id DESC LIMIT 1"
        ).format(self._table, log_horizon=self._horizon)

        def read() -> Position | None:
            with self.pool.connection() as conn:
                row = conn.execute(statement).fetchone()
            return None if row is None else Position(row[0], row[1])

        return self._retry(read, what=what)

    def start_position(self, start: StartFrom) -> Position:
        """The position a follower starting from ``start`` records first: it then reads
        every event after it. ``head`` is the readable head (events of transactions still
        open are still delivered when they commit); a time is the position just before the
        first event, in log order, recorded at or after it (the head when there is none)."""
        if isinstance(start, Position):
            return start
        if start == "origin":
            return Position.ORIGIN
        if start == "head":
            return self.head() or Position.ORIGIN
        moment = start

        def read() -> Position | None:
            with self.pool.connection() as conn:
                first = conn.execute(
                    sql.SQL(
                        "SELECT transaction_id, notification_id FROM {} e"
                        " WHERE recorded_at >= %s AND "
                        + _SETTLED
                        + " ORDER BY e.transaction_id, e.notification_id LIMIT 1"
                    ).format(self._table, log_horizon=self._horizon),
                    (moment,),
                ).fetchone()
                if first is None:
                    return None
                before = conn.execute(
                    sql.SQL(
                        "SELECT transaction_id::text::bigint, notification_id FROM {} e"
                        " WHERE (e.transaction_id, e.notification_id) < (%s, %s)"
                        " ORDER BY e.transaction_id DESC, e.notification_id DESC LIMIT 1"
                    ).format(self._table),
                    (first[0], first[1]),
                ).fetchone()
            return Position.ORIGIN if before is None else Position(before[0], before[1])

        found = self._retry(read, what=f"finding the first event recorded at {moment}")
        return self.head() or Position.ORIGIN if found is None else found

    def position_of(self, notification_id: int) -> Position | None:
        """The log position of a notification id, or None when no such row exists."""

        def read() -> Position | None:
            with self.pool.connection() as conn:
                row = conn.execute(
                    sql.SQL(
                        "SELECT transaction_id::text::bigint FROM {} WHERE notification_id = %s"
                    ).format(self._table),
                    (notification_id,),
                ).fetchone()
            return None if row is None else Position(row[0], notification_id)

        return self._retry(read, what=f"looking up notification {notification_id}")

    def oldest_open_transaction(self) -> OpenTransaction | None:
        """The transaction that holds the log's followers back now, if one does.

        Followers never read past the oldest transaction that can still append to the
        log (one that holds the log's write lock): events committed after it began wait
        for it to end. That is a backend's transaction, or a prepared (two-phase) one,
        which no backend holds any more and only ``COMMIT PREPARED`` or ``ROLLBACK
        PREPARED`` ends. (On a hot standby followers wait for every transaction of the
        primary; this looks at the server it runs on.)
        """
        # The oldest running transaction that holds the log's write lock (its 32-bit id
        # widened to the log's 64-bit one below the next id to be assigned).
        statement = sql.SQL(
            "WITH n AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next),"
            " h AS (SELECT transaction_id AS x FROM {}() WHERE appends"
            " ORDER BY age(transaction_id) DESC LIMIT 1)"
            " SELECT a.pid,"
            " n.next - ((n.next - h.x::text::bigint) % 4294967296 + 4294967296) % 4294967296,"
            " coalesce(a.xact_start, p.prepared), a.state, a.application_name,"
            " left(a.query, 200),"
            " extract(epoch FROM clock_timestamp() - coalesce(a.xact_start, p.prepared))::float8,"
            " coalesce(a.datname, p.database), p.gid, p.owner"
            " FROM h CROSS JOIN n LEFT JOIN pg_stat_activity a ON a.backend_xid = h.x"
            " LEFT JOIN pg_prepared_xacts p ON p.transaction = h.x"
            " WHERE a.pid IS NOT NULL OR p.gid IS NOT NULL"
        ).format(sql.Identifier(self.schema, "log_transactions"))

        def read() -> OpenTransaction | None:
            with self.pool.connection() as conn:
                row = conn.execute(statement).fetchone()
            return None if row is None else OpenTransaction(*row)

        return self._retry(read, what="looking up what holds the log's followers back")

    # -- eventsourcing's notification API ---------------------------------------------------

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> list[Notification]:
        """Return notifications by id, for eventsourcing's notification log API.

        Only notifications of ended transactions are returned, but ids are not commit
        order: a consumer that tracks the last *id* it saw can miss a notification that
        commits late. Followers should use :meth:`read_notifications` and track positions.
        """
        statement = sql.SQL(
            "SELECT originator_id, originator_version, topic, state, notification_id FROM {} "
            "WHERE " + _SETTLED
        ).format(self._table, log_horizon=self._horizon)
        params: list[Any] = []
        if start is not None:
            statement += sql.SQL(
                " AND notification_id >= %s" if inclusive_of_start else " AND notification_id > %s"
            )
            params.append(start)
        if stop is not None:
            statement += sql.SQL(" AND notification_id <= %s")
            params.append(stop)
        if topics:
            statement += sql.SQL(" AND topic = ANY(%s)")
            params.append(list(topics))
        statement += sql.SQL(" ORDER BY notification_id LIMIT %s")
        params.append(limit)

        def select() -> list[Notification]:
            with self.pool.connection() as conn, conn.cursor(binary=True) as cur:
                cur.execute(statement, params)
                return [Notification(r[0], r[1], r[2], r[3], r[4]) for r in cur.fetchall()]

        return self._retry(select, what=f"selecting notifications from {start}")

    def max_notification_id(self) -> int | None:
        """The largest notification id recorded, or None when the log is empty."""

        def select() -> int | None:
            with self.pool.connection() as conn:
                row = conn.execute(
                    sql.SQL("SELECT max(notification_id) FROM {}").format(self._table)
                ).fetchone()
            return None if row is None else row[0]

        return self._retry(select, what="reading the largest notification id")

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[Any]:
        """Refused: a subscription resumes from a notification id, and ids are not commit
        order here, so it would skip events that commit late (eventsourcing's
        ``ProjectionRunner`` subscribes so). Raises :class:`UnsupportedFollowerError`,
        which names eventkit's followers instead."""
        raise UnsupportedFollowerError(f"subscribe(gt={gt}) on eventkit's recorder")


def stream_query(
    select: sql.Composed,
    originator_id: UUID | str,
    *,
    gt: int | None,
    lte: int | None,
    desc: bool,
    limit: int | None,
) -> tuple[sql.Composed, list[Any]]:
    """``select`` (rows of one stream, ``WHERE originator_id = %s``) narrowed by version and
    ordered by it, with its parameters: eventsourcing's ``select_events`` arguments."""
    statement = select
    params: list[Any] = [originator_id]
    if gt is not None:
        statement += sql.SQL(" AND originator_version > %s")
        params.append(gt)
    if lte is not None:
        statement += sql.SQL(" AND originator_version <= %s")
        params.append(lte)
    statement += sql.SQL(
        " ORDER BY originator_version DESC" if desc else " ORDER BY originator_version"
    )
    if limit is not None:
        statement += sql.SQL(" LIMIT %s")
        params.append(limit)
    return statement, params


def _as_is(text: str) -> str:
    return text


def _options(
    meta: Metadata | None, key: object, trace_headers: Mapping[str, str] | None = None
) -> AppendOptions:
    """An append's options from the metadata in force, its idempotency key and the trace
    context to store with its events."""
    if key is not None and (not isinstance(key, str) or not key):
        raise PersistenceError(f"an idempotency key must be a non-empty str, got {key!r}")
    all_headers = {**(meta.headers if meta is not None else {}), **(trace_headers or {})}
    headers = None
    if all_headers:
        try:
            headers = pydantic_core.to_json(all_headers).decode()
        except pydantic_core.PydanticSerializationError as e:
            raise EventEncodingError(
                f"the metadata's headers {all_headers!r} are not JSON: {e}"
            ) from e
    if meta is None:
        return AppendOptions(headers=headers, idempotency_key=key)
    return AppendOptions(meta.correlation_id, meta.causation_id, headers, key)


def _row(event: StoredEvent) -> tuple[UUID, int, str, bytes]:
    originator_id = event.originator_id
    if not isinstance(originator_id, UUID):
        try:
            originator_id = UUID(originator_id)
        except ValueError:
            raise EventEncodingError(
                f"stream id {originator_id!r} (topic {event.topic}, version "
                f"{event.originator_version}) is not a UUID; eventkit identifies streams by UUID"
            ) from None
    return (originator_id, event.originator_version, event.topic, event.state)


def logged_notification(r: tuple[Any, ...]) -> LoggedNotification:
    """A row of :meth:`PostgresEventRecorder.notification_query` as a notification."""
    return _logged(r)


def _logged(r: tuple[Any, ...]) -> LoggedNotification:
    recorded_at: datetime = r[6]
    return assemble(
        originator_id=r[0],
        originator_version=r[1],
        topic=r[2],
        state=r[3],
        id=r[4],
        transaction_id=r[5],
        recorded_at=recorded_at,
        correlation_id=r[7],
        causation_id=r[8],
        headers=r[9],
    )


def _server_refused(error: BaseException) -> bool:
    """True when the server answered the statement with an error (it has a SQLSTATE): it
    was not committed. A lost connection has none: its statement may have committed."""
    return isinstance(error, psycopg.Error) and error.sqlstate is not None


def _rolled_back(error: BaseException) -> bool:
    """True when the server reports that it rolled the transaction back (SQLSTATE class 40)."""
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("40")


def _streams(rows: list[tuple[UUID, int, str, bytes]]) -> str:
    streams = sorted({str(r[0]) for r in rows})
    shown = ", ".join(streams[:5])
    return shown + (f" and {len(streams) - 5} more" if len(streams) > 5 else "")

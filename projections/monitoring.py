"""A worker process's (or ``eventkit exporter``'s) metrics endpoint and health checks.

``/metrics`` serves the Prometheus metrics of :mod:`infrastructure.metrics` (and the
client library's process metrics). ``/healthz`` is green while every loop of this process
keeps turning; it never asks the database (a loop waiting for the database is not
stalled: see :mod:`projections.liveness`). ``/readyz`` is green while ``/healthz`` is,
the database answers, this process works (a standby whose worker id another process
holds does not), and every consumer this process runs is caught up within ``max_lag_s``
seconds, is not failing on a stuck stream and, for a reaction, has no message older than
``max_lag_s`` waiting; otherwise it names the reasons.

A :class:`Monitor` thread refreshes, every ``interval_s``, the gauges that come from the
database for every DECLARED consumer, whether a process runs it or not (lag in events and
seconds per partition, whether a live worker runs each partition, open dead letters, a
reaction's queue by state and its oldest message's age, pool connections), with the same
queries as ``eventkit status``, and logs when readiness changes, with the reasons. When
the database does not answer, those gauges are withdrawn (``eventkit_database_up`` turns
0), not left frozen at their last values.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg_pool
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from psycopg.conninfo import conninfo_to_dict

from eventkit.infrastructure import metrics
from eventkit.projections.liveness import Beat
from eventkit.projections.projection import Consumer
from eventkit.projections.status import consumer_status, reaction_status

logger = logging.getLogger(__name__)

#: The gauges a refresh sets from the database (withdrawn when it fails).
_FROM_DATABASE: tuple[Gauge, ...] = (
    metrics.LAG_EVENTS,
    metrics.LAG_SECONDS,
    metrics.CONSUMER_RUNNING,
    metrics.DEAD_LETTERS_OPEN,
    metrics.REACTION_QUEUE,
    metrics.REACTION_OLDEST,
)


@dataclass(frozen=True)
class Check:
    ok: bool
    problems: tuple[str, ...]

    def text(self) -> str:
        return "ok\n" if self.ok else "\n".join(self.problems) + "\n"


def describe_database(pool: psycopg_pool.ConnectionPool) -> str:
    """The database a pool connects to, without its password: ``DBNAME at HOST:PORT``."""
    conninfo = pool.conninfo
    info = conninfo_to_dict(conninfo() if callable(conninfo) else conninfo)
    host = info.get("host") or "localhost"
    return f"database {info.get('dbname') or '?'} at {host}:{info.get('port') or 5432}"


class Monitor:
    """Keeps the database-derived gauges fresh and answers the health checks."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        schema: str,
        *,
        projections: Sequence[type[Consumer]] = (),
        reactions: Sequence[type[Consumer]] = (),
        runs: Collection[str] | None = None,
        loops: Sequence[Beat] | Callable[[], Sequence[Beat]] = (),
        not_ready: Callable[[], str | None] = lambda: None,
        postgres_broker: bool = True,
        max_lag_s: float = 30.0,
        stall_s: float = 30.0,
        interval_s: float = 5.0,
    ) -> None:
        self.pool = pool
        self.schema = schema
        #: The declared consumers whose gauges this monitor exports.
        self.projections = list(projections)
        self.reactions = list(reactions)
        #: The names of the consumers this process runs (readiness judges those; None: all).
        self.runs = None if runs is None else set(runs)
        #: The signs of life of this process's loops (a function: a group's may change).
        self.loops = loops if callable(loops) else (lambda: list(loops))
        #: Why this process works on nothing (a standby), or None.
        self.not_ready = not_ready
        self.postgres_broker = postgres_broker
        self.max_lag_s = max_lag_s
        self.stall_s = stall_s
        self.interval_s = interval_s
        #: The monitor's own loop (the exporter's /healthz).
        self.beat = Beat("monitor")
        self._ready = Check(False, ("not checked yet",))
        self._problems: tuple[str, ...] = ("not checked yet",)
        self._database_error: str | None = None
        self._refreshed_at: float | None = None
        self._refreshing_since: float | None = None
        self._exported: dict[Gauge, set[tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.beat.turn()
            try:
                with self.beat.waiting():
                    self.refresh()
            except Exception as e:  # the database may be away: say so, and try again
                self.failed(e)
            stop.wait(self.interval_s)

    def failed(self, error: Exception) -> None:
        """The status query failed: withdraw the database's gauges, and say why."""
        reason = f"{describe_database(self.pool)} did not answer: {type(error).__name__}: {error}"
        with self._lock:
            before, self._database_error = self._database_error, reason
            self._refreshing_since = None
        metrics.DATABASE_UP.set(0)
        self._withdraw(set())
        if before is None:
            logger.warning("monitor: %s", reason, extra={"error_class": type(error).__name__})
        self._decide()

    def refresh(self) -> Check:
        """Read lag, queues and dead letters from the database, set the gauges, decide
        readiness."""
        with self._lock:
            self._refreshing_since = time.monotonic()
        # A first statement with a bounded wait: with the database away, the status
        # queries would wait for the pool's timeout (and retry), the figures frozen.
        with self.pool.connection(timeout=max(1.0, self.interval_s)) as conn:
            conn.execute("SELECT 1")
        problems: list[str] = []
        exported: set[tuple[Gauge, tuple[str, ...]]] = set()

        def put(gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
            gauge.labels(*labels).set(value)
            exported.add((gauge, labels))

        for s in consumer_status(self.pool, self.schema, self.projections):
            if s.consumer.endswith("#rebuild"):
                continue
            self._consumer_gauges(put, "projection", s)
            problems += self._judge("projection", s.consumer, s.lag_seconds, s.state, s.detail)
        statuses = consumer_status(self.pool, self.schema, self.reactions)
        followers = {s.consumer: s for s in statuses}
        for r in reaction_status(
            self.pool,
            self.schema,
            self.reactions,
            postgres_broker=self.postgres_broker,
            followers=statuses,
        ):
            self._consumer_gauges(put, "reaction", followers[r.reaction])
            for state, count in (
                ("queued", r.queued),
                ("in_flight", r.in_flight),
                ("retrying", r.retrying),
            ):
                if count is not None:
                    put(metrics.REACTION_QUEUE, (r.reaction, state), count)
            put(metrics.REACTION_OLDEST, (r.reaction,), r.oldest_age_s)
            problems += self._judge("reaction", r.reaction, r.lag_seconds, r.state, None)
            if self._judged(r.reaction) and r.oldest_age_s > self.max_lag_s:
                problems.append(
                    f"reaction {r.reaction}: its oldest message has waited {r.oldest_age_s:.1f} s "
                    f"(limit {self.max_lag_s:.0f} s; {r.queued} queued)"
                )
        stats = self.pool.get_stats()
        size = stats.get("pool_size", 0)
        available = stats.get("pool_available", 0)
        metrics.POOL_CONNECTIONS.labels(self.pool.name, "in_use").set(size - available)
        metrics.POOL_CONNECTIONS.labels(self.pool.name, "idle").set(available)
        metrics.POOL_CONNECTIONS.labels(self.pool.name, "waiting").set(
            stats.get("requests_waiting", 0)
        )
        metrics.DATABASE_UP.set(1)
        self._withdraw(exported)
        with self._lock:
            self._problems = tuple(problems)
            self._database_error = None
            self._refreshed_at = time.monotonic()
            self._refreshing_since = None
        return self._decide()

    def _consumer_gauges(self, put: Callable[..., None], kind: str, s: Any) -> None:
        """A consumer's lag and running state per partition, and its open dead letters."""
        rows = s.partitions or (None,)
        for row in rows:
            part = "0" if row is None else str(row.partition)
            state = s.state if row is None else row.state
            put(
                metrics.LAG_EVENTS,
                (kind, s.consumer, part),
                s.lag_events if row is None else row.lag_events,
            )
            put(
                metrics.LAG_SECONDS,
                (kind, s.consumer, part),
                s.lag_seconds if row is None else row.lag_seconds,
            )
            put(metrics.CONSUMER_RUNNING, (kind, s.consumer, part), float(state != "stopped"))
        put(metrics.DEAD_LETTERS_OPEN, (kind, s.consumer), s.dead_letters)

    def _withdraw(self, exported: set[tuple[Gauge, tuple[str, ...]]]) -> None:
        """Remove the database gauges' series not set by this refresh (a consumer
        repartitioned, or the database away)."""
        with self._lock:
            for gauge in _FROM_DATABASE:
                now = {labels for g, labels in exported if g is gauge}
                for labels in self._exported.get(gauge, set()) - now:
                    gauge.remove(*labels)
                self._exported[gauge] = now

    def _judged(self, name: str) -> bool:
        return self.runs is None or name in self.runs

    def _judge(
        self, kind: str, name: str, lag_s: float, state: str, detail: str | None
    ) -> list[str]:
        if not self._judged(name):
            return []
        problems = []
        if lag_s > self.max_lag_s:
            problems.append(f"{kind} {name} lags {lag_s:.1f} s (limit {self.max_lag_s:.0f} s)")
        if state == "failing":
            problems.append(f"{kind} {name} is failing: {detail or 'retrying an event'}")
        return problems

    def _decide(self) -> Check:
        """Readiness from the last refresh, log its changes."""
        check = self.ready()
        with self._lock:
            before, self._ready = self._ready, check
        metrics.READY.set(1 if check.ok else 0)
        if check.ok != before.ok:
            if check.ok:
                logger.info("ready: every consumer is caught up within %.0f s", self.max_lag_s)
            else:
                logger.warning("not ready: %s", "; ".join(check.problems))
        return check

    def health(self) -> Check:
        """Green while every loop of this process has turned within ``stall_s`` or waits
        for the database. Never asks the database."""
        now = time.monotonic()
        stalled = [
            why for why in (b.stalled(self.stall_s, now) for b in self.loops()) if why is not None
        ]
        return Check(not stalled, tuple(stalled))

    def ready(self) -> Check:
        """Green while healthy, working, the database answering, every consumer this
        process runs caught up."""
        with self._lock:
            error, problems = self._database_error, self._problems
            since = self._refreshing_since
        found = list(self.health().problems)
        standby = self.not_ready()
        if standby is not None:
            found.append(standby)
        if error is not None:
            found.append(error)
        elif since is not None and time.monotonic() - since > max(2 * self.interval_s, 5.0):
            found.append(
                f"{describe_database(self.pool)} has not answered the status query for "
                f"{time.monotonic() - since:.0f} s"
            )
        else:
            found += problems
        return Check(not found, tuple(found))


#: Errors of a scraper that went away before its answer was written: not this process's.
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed request through eventkit's logger (one line, in the log's format),
        never as a traceback on standard error; a scraper that hung up is not an error."""
        error = sys.exc_info()[1]
        if isinstance(error, _GONE):
            logger.debug("metrics: %s went away: %s", client_address, error)
            return
        logger.warning(
            "metrics: request from %s failed: %s: %s",
            client_address[0] if client_address else "?",
            type(error).__name__,
            error,
            exc_info=True,
            extra={"error_class": type(error).__name__},
        )


class MonitoringServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a thread, on ``host``
    (default: this machine only; ``0.0.0.0`` for every interface)."""

    def __init__(self, monitor: Monitor, port: int, host: str = "127.0.0.1") -> None:
        self.monitor = monitor
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
                elif path in {"/healthz", "/readyz"}:
                    check = (
                        server.monitor.health() if path == "/healthz" else server.monitor.ready()
                    )
                    self._send(200 if check.ok else 503, check.text().encode(), "text/plain")
                else:
                    self._send(404, b"not found: /metrics, /healthz, /readyz\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except _GONE as e:  # the scraper hung up (its timeout): nothing to answer
                    self.close_connection = True
                    logger.debug("metrics: %s went away: %s", self.client_address, e)

            def log_message(self, format: str, *args: Any) -> None:
                # Scrapes every few seconds would drown the worker's log: DEBUG, through
                # the logger (and so in the log's format), never raw on standard error.
                logger.debug("metrics: %s %s", self.address_string(), format % args)

        self._http = _Server((host, port), Handler)
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="eventkit-metrics", daemon=True
        )

    @property
    def host(self) -> str:
        return str(self._http.server_address[0])

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        """Where it serves, as bound (``http://HOST:PORT``)."""
        host = self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def start(self) -> MonitoringServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

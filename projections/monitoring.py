"""A worker process's metrics endpoint and health checks.

``/metrics`` serves the Prometheus metrics of :mod:`infrastructure.metrics` (and the
client library's process metrics). ``/healthz`` is green while every consumer's loop in
this process keeps turning. ``/readyz`` is green while every consumer is caught up within
``max_lag_s`` seconds, none is failing on a stuck stream, and ``/healthz`` is green.

A :class:`Monitor` thread refreshes, every ``interval_s``, the gauges that come from the
database (lag in events and seconds, open dead letters, pool connections) with the same
queries as ``eventkit status``, and logs when readiness changes, with the reasons.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg_pool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eventkit.infrastructure import metrics
from eventkit.projections.follower import Follower
from eventkit.projections.projection import Consumer
from eventkit.projections.status import consumer_status, reaction_status

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    ok: bool
    problems: tuple[str, ...]

    def text(self) -> str:
        return "ok\n" if self.ok else "\n".join(self.problems) + "\n"


class Monitor:
    """Keeps the database-derived gauges fresh and answers the health checks."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        schema: str,
        *,
        projections: Sequence[type[Consumer]] = (),
        reactions: Sequence[type[Consumer]] = (),
        followers: Sequence[Follower] | Callable[[], Sequence[Follower]] = (),
        postgres_broker: bool = True,
        max_lag_s: float = 30.0,
        stall_s: float = 30.0,
        interval_s: float = 5.0,
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.projections = list(projections)
        self.reactions = list(reactions)
        #: The followers whose loops the health check watches (a function: they change as
        #: a worker group hands partitions over).
        self.followers = followers if callable(followers) else (lambda: list(followers))
        self.postgres_broker = postgres_broker
        self.max_lag_s = max_lag_s
        self.stall_s = stall_s
        self.interval_s = interval_s
        self._ready = Check(False, ("not checked yet",))
        self._lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.refresh()
            except Exception as e:  # the database may be away: say so, and try again
                with self._lock:
                    self._ready = Check(False, (f"status query failed: {type(e).__name__}: {e}",))
                logger.warning("monitor: status query failed: %s: %s", type(e).__name__, e)
            stop.wait(self.interval_s)

    def refresh(self) -> Check:
        """Read lag and dead letters from the database, set the gauges, decide readiness."""
        problems: list[str] = []
        for s in consumer_status(self.pool, self.schema, self.projections):
            if s.consumer.endswith("#rebuild"):
                continue
            self._gauges("projection", s.consumer, s.lag_events, s.lag_seconds, s.dead_letters)
            for part in s.partitions:  # several partitions: each one's own lag too
                metrics.LAG_EVENTS.labels("projection", s.consumer, str(part.partition)).set(
                    part.lag_events
                )
                metrics.LAG_SECONDS.labels("projection", s.consumer, str(part.partition)).set(
                    part.lag_seconds
                )
            problems += self._judge("projection", s.consumer, s.lag_seconds, s.state, s.detail)
        for r in reaction_status(
            self.pool, self.schema, self.reactions, postgres_broker=self.postgres_broker
        ):
            self._gauges("reaction", r.reaction, r.lag_events, r.lag_seconds, r.dead_letters)
            problems += self._judge("reaction", r.reaction, r.lag_seconds, r.state, None)
        stats = self.pool.get_stats()
        size = stats.get("pool_size", 0)
        available = stats.get("pool_available", 0)
        metrics.POOL_CONNECTIONS.labels(self.pool.name, "in_use").set(size - available)
        metrics.POOL_CONNECTIONS.labels(self.pool.name, "idle").set(available)
        metrics.POOL_CONNECTIONS.labels(self.pool.name, "waiting").set(
            stats.get("requests_waiting", 0)
        )
        health = self.health()
        check = Check(not problems and health.ok, (*health.problems, *problems))
        with self._lock:
            before, self._ready = self._ready, check
        if check.ok != before.ok:
            if check.ok:
                logger.info("ready: every consumer is caught up within %.0f s", self.max_lag_s)
            else:
                logger.warning("not ready: %s", "; ".join(check.problems))
        return check

    @staticmethod
    def _gauges(kind: str, name: str, lag: int, lag_s: float, dead: int) -> None:
        """The consumer's lag under partition "0": all of it for one partition; with
        several, partition 0's gauges are set again by its own row (a dashboard sums
        ``eventkit_lag_events`` by name)."""
        metrics.LAG_EVENTS.labels(kind, name, "0").set(lag)
        metrics.LAG_SECONDS.labels(kind, name, "0").set(lag_s)
        metrics.DEAD_LETTERS_OPEN.labels(kind, name).set(dead)

    def _judge(
        self, kind: str, name: str, lag_s: float, state: str, detail: str | None
    ) -> list[str]:
        problems = []
        if lag_s > self.max_lag_s:
            problems.append(f"{kind} {name} lags {lag_s:.1f} s (limit {self.max_lag_s:.0f} s)")
        if state == "failing":
            problems.append(f"{kind} {name} is failing: {detail or 'retrying an event'}")
        return problems

    def health(self) -> Check:
        """Green while every consumer loop of this process has turned within ``stall_s``."""
        now = time.monotonic()
        stalled = [
            f"{f.kind} {f.name}: loop stalled for {now - f.last_loop:.0f} s"
            for f in self.followers()
            if now - f.last_loop > self.stall_s
        ]
        return Check(not stalled, tuple(stalled))

    def ready(self) -> Check:
        with self._lock:
            ready = self._ready
        health = self.health()
        if not health.ok:
            return Check(False, (*health.problems, *ready.problems))
        return ready


class MonitoringServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a thread."""

    def __init__(self, monitor: Monitor, port: int, host: str = "0.0.0.0") -> None:
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
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the worker's log

        self._http = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="eventkit-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> MonitoringServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

"""Running an application's projections and reactions in a process: what ``eventkit
workers`` does, for services that run the workers in a process of their own.

```python
import eventkit
from myservice.eventkit_app import app

with eventkit.Workers(app, metrics_port=9400) as workers:   # threads; stopped on exit
    workers.wait()                                          # until stop() or Ctrl-C
```

``Workers.run(stop)`` blocks until ``stop`` (a ``threading.Event``) is set instead. Several
processes, on several machines, running the same application share its partitions out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any

from eventkit.infrastructure.broker import (
    BrokerKind,
    BrokerOptions,
    broker_connections,
    broker_kind,
)
from eventkit.infrastructure.errors import ConfigurationError
from eventkit.infrastructure.factory import mapper_for, read_recorder, shared_pool
from eventkit.infrastructure.logfields import set_process_field
from eventkit.infrastructure.partitions import Partition
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings, redact
from eventkit.projections.app import App, Runtime
from eventkit.projections.applier import ProjectionApplier
from eventkit.projections.follower import (
    BatchReport,
    Follower,
    FollowerOptions,
    PollPolicy,
    RetryPolicy,
)
from eventkit.projections.group import Runnable, WorkerGroup
from eventkit.projections.monitoring import Monitor, MonitoringServer
from eventkit.projections.projection import Projection
from eventkit.projections.reaction import Reaction
from eventkit.projections.reactor import ReactionRuntime, reaction_runtime

logger = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def follower_options(
    settings: Settings,
    *,
    worker_id: str,
    batch_size: int = 1000,
    retry: RetryPolicy | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    lease_ttl_s: float = 5.0,
    poll: PollPolicy | None = None,
    durable_commits: bool = False,
) -> FollowerOptions:
    """How this process's followers follow the log of ``settings``' database: they read
    it through the process's pool, or through a pool on ``EVENTKIT_READ_URL`` (a
    streaming replica) when that is set."""
    pool, url = shared_pool(settings)
    return FollowerOptions(
        url=url,
        recorder=PostgresEventRecorder(
            pool, settings.schema, notify_channel=settings.notify_channel
        ),
        reader=read_recorder(settings),
        worker_id=worker_id,
        batch_size=batch_size,
        retry=retry or RetryPolicy(),
        poll=poll or PollPolicy(),
        lease_ttl_s=lease_ttl_s,
        durable_commits=durable_commits,
        notify_channel=settings.notify_channel,
        on_batch=on_batch,
        tracing=settings.tracing,
    )


def follower_factory(
    options: FollowerOptions,
    *,
    construct: Callable[[type[Projection]], Projection] | None = None,
) -> Callable[[type[Projection], int, int], Follower]:
    """Makes the follower of partition ``k`` of ``P`` of a projection: ``make(cls, k, P)``,
    following as ``options`` say; projections are made by ``construct`` (default: the
    class called with no arguments)."""
    mapper = mapper_for(options.recorder.pool, options.schema)

    def make(projection: type[Projection], partition: int, partitions: int) -> Follower:
        applier = ProjectionApplier(
            construct(projection) if construct is not None else projection(),
            options.schema,
            mapper=mapper,
            tracing=options.tracing,
        )
        key = Partition(projection.partition_key, partitions, partition)
        return Follower(projection.name, applier, key, options)

    return make


def build_followers(
    projections: Sequence[type[Projection]],
    settings: Settings,
    *,
    worker_id: str,
    batch_size: int = 1000,
    retry: RetryPolicy | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> list[Follower]:
    """One single-partition follower per projection, each managing its own lease."""
    options = follower_options(
        settings, worker_id=worker_id, batch_size=batch_size, retry=retry, on_batch=on_batch
    )
    make = follower_factory(options)
    return [make(p, 0, 1) for p in projections]


def build_group(
    projections: Sequence[type[Projection]],
    settings: Settings,
    *,
    worker_id: str,
    batch_size: int = 1000,
    retry: RetryPolicy | None = None,
    reactions: Sequence[Runnable] = (),
    heartbeat_s: float = 1.0,
    lease_ttl_s: float = 5.0,
    poll: PollPolicy | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    durable_commits: bool = False,
    construct: Callable[[type[Projection]], Projection] | None = None,
    broker_connections: int = 0,
) -> WorkerGroup:
    """This process's member of the worker group: ``projections`` and the reaction
    followers ``reactions``, their partitions shared out with the other members."""
    options = follower_options(
        settings,
        worker_id=worker_id,
        batch_size=batch_size,
        retry=retry,
        on_batch=on_batch,
        lease_ttl_s=lease_ttl_s,
        poll=poll,
        durable_commits=durable_commits,
    )
    make = follower_factory(options, construct=construct)
    consumers = [Runnable(p.name, p, partial(make, p)) for p in projections]
    _, url = shared_pool(settings)
    return WorkerGroup(
        [*consumers, *reactions],
        url=url,
        schema=settings.schema,
        worker_id=worker_id,
        heartbeat_s=heartbeat_s,
        lease_ttl_s=lease_ttl_s,
        notify_channel=settings.notify_channel,
        poll=poll,
        read_pool_size=settings.pool_max_size,
        durable_commits=durable_commits,
        broker_connections=broker_connections,
    )


def run_until(followers: Sequence[Follower], stop: threading.Event) -> None:
    """Run each follower in a thread until ``stop`` is set; wait for all to finish."""
    threads = [
        threading.Thread(target=f.run, args=(stop,), name=f"follower-{f.label}", daemon=True)
        for f in followers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker process runs (``eventkit workers``' flags)."""

    batch_size: int = 1000
    max_attempts: int = 5
    #: dramatiq worker threads for reactions.
    threads: int = 8
    heartbeat_s: float = 1.0
    lease_ttl_s: float = 5.0
    #: PostgreSQL broker: messages claimed by a process silent this long are queued again.
    heartbeat_ttl_s: float = BrokerOptions.heartbeat_ttl_s
    durable_commits: bool = False
    #: Serve /metrics, /healthz and /readyz on this port (None: off).
    metrics_port: int | None = None
    #: The address it binds (``0.0.0.0``: every interface).
    metrics_host: str = "127.0.0.1"
    #: /readyz turns red when a consumer lags more than this.
    max_lag_s: float = 30.0
    #: /healthz turns red when a loop has not turned for this long (and does not wait for
    #: the database).
    stall_s: float = 30.0


class Workers:
    """An application's projections and reactions, run in this process's threads."""

    def __init__(
        self,
        app: App,
        names: Sequence[str] = (),
        *,
        projections_only: bool = False,
        reactions_only: bool = False,
        settings: Settings | None = None,
        worker_id: str | None = None,
        options: WorkerOptions | None = None,
        **option_values: Any,
    ) -> None:
        """Run the consumers ``names`` of ``app`` (all when none are named).
        ``option_values`` set :class:`WorkerOptions` fields by name."""
        self.app = app
        self.options = options or WorkerOptions(**option_values)
        self.settings = settings or Settings.from_env()
        self.worker_id = worker_id or default_worker_id()
        set_process_field("worker_id", self.worker_id)  # on every JSON log line
        self.runtime = Runtime(app, self.settings)
        projections, reactions = app.select(names)
        if reactions_only:
            projections = []
        if projections_only:
            reactions = []
        if not projections and not reactions:
            raise ConfigurationError(
                f"nothing to run: {app.describe()}; name a projection or a reaction"
            )
        self.projections = projections
        self.reactions = reactions
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: MonitoringServer | None = None

    def _reaction_runtime(self, reactions: Sequence[Reaction]) -> ReactionRuntime:
        o = self.options
        return reaction_runtime(
            reactions,
            self.settings,
            worker_id=self.worker_id,
            broker_options=BrokerOptions(
                heartbeat_interval_s=o.heartbeat_ttl_s / 5,
                heartbeat_ttl_s=o.heartbeat_ttl_s,
                maintenance_interval_s=o.heartbeat_ttl_s / 2,
            ),
            worker_threads=o.threads,
            batch_size=o.batch_size,
            follow=False,  # the group runs the followers, partitioned
            durable_commits=o.durable_commits,
        )

    def start(self) -> Workers:
        """Start the worker threads (and the metrics server, when a port is set)."""
        o = self.options
        reactions = [self.runtime.construct(r) for r in self.reactions]
        runtime = self._reaction_runtime(reactions) if reactions else None
        group = build_group(
            self.projections,
            self.settings,
            worker_id=self.worker_id,
            batch_size=o.batch_size,
            retry=RetryPolicy(max_attempts=o.max_attempts),
            reactions=runtime.consumers if runtime is not None else (),
            heartbeat_s=o.heartbeat_s,
            lease_ttl_s=o.lease_ttl_s,
            durable_commits=o.durable_commits,
            construct=self.runtime.construct,
            broker_connections=(
                broker_connections(len(reactions))
                if reactions and broker_kind(self.settings.broker_url) is BrokerKind.POSTGRES
                else 0
            ),
        )
        logger.info(
            "worker %s running %s: projections %s, reactions %s (broker: %s) on schema %s",
            self.worker_id,
            self.app.name,
            ", ".join(p.name for p in self.projections) or "none",
            ", ".join(r.name for r in self.reactions) or "none",
            broker_kind(self.settings.broker_url).value,
            self.settings.schema,
        )
        if self.settings.read_url is not None:
            logger.info(
                "worker %s: followers read the log from %s (EVENTKIT_READ_URL); views, "
                "positions and leases are written on the database",
                self.worker_id,
                redact(self.settings.read_url),
            )
        self._threads = [threading.Thread(target=group.run, args=(self._stop,), name="group")]
        if runtime is not None:
            self._threads.append(
                threading.Thread(target=runtime.run, args=(self._stop,), name="reactions")
            )
        if o.metrics_port is not None:
            pool, _ = shared_pool(self.settings)
            # Every declared consumer's gauges, whether this process runs it or not;
            # readiness judges the ones it runs.
            monitor = Monitor(
                pool,
                self.settings.schema,
                projections=self.app.projections,
                reactions=self.app.reactions,
                runs={c.name for c in [*self.projections, *self.reactions]},
                loops=group.current_beats,
                not_ready=group.not_ready,
                postgres_broker=broker_kind(self.settings.broker_url) is BrokerKind.POSTGRES,
                max_lag_s=o.max_lag_s,
                stall_s=o.stall_s,
            )
            self._server = MonitoringServer(monitor, o.metrics_port, o.metrics_host).start()
            # A daemon: it holds no lease and writes nothing, and a status query waiting
            # for an unreachable database must not hold the process's exit up.
            self._threads.append(
                threading.Thread(
                    target=monitor.run, args=(self._stop,), name="monitor", daemon=True
                )
            )
            logger.info(
                "metrics at %s/metrics; health at %s/healthz and %s/readyz",
                self._server.url,
                self._server.url,
                self._server.url,
            )
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Ask every thread to finish the batches and messages in hand and stop."""
        self._stop.set()

    def wait(self, stop: threading.Event | None = None) -> None:
        """Block until the workers have stopped (after :meth:`stop`, or once ``stop`` is
        set), joining in slices so that signal handlers run in the main thread."""
        for t in self._threads:
            while t.is_alive() and not t.daemon:
                if stop is not None and stop.is_set():
                    self._stop.set()
                t.join(0.2)
        if self._server is not None:
            self._server.stop()
            self._server = None
        logger.info("worker %s stopped", self.worker_id)

    def run(self, stop: threading.Event) -> None:
        """Start, and run until ``stop`` is set; then stop and wait."""
        self.start()
        self.wait(stop)

    def __enter__(self) -> Workers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.wait()

"""``eventkit workers``: run projection workers and reactions until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from eventkit.bootstrap import application_env, stop_on_signals, tune_gc
from eventkit.domain.shop.application import Shop
from eventkit.infrastructure.broker import BrokerKind, BrokerOptions, broker_kind
from eventkit.infrastructure.errors import ConfigurationError
from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.group import Consumer, WorkerGroup
from eventkit.projections.monitoring import Monitor, MonitoringServer
from eventkit.projections.projection import Projection
from eventkit.projections.reactor import ReactionRuntime, reaction_runtime
from eventkit.projections.shop import PROJECTIONS
from eventkit.projections.shop.reactions import REACTION_TYPES, shop_reactions
from eventkit.projections.worker import BatchReport, PollPolicy, ProjectionWorker, RetryPolicy

logger = logging.getLogger(__name__)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "workers",
        help="run projection workers and reactions (all by default) until SIGTERM or Ctrl-C",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"projections ({', '.join(PROJECTIONS)}) and reactions ({', '.join(REACTION_TYPES)})",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--projections-only", action="store_true", help="run no reactions")
    only.add_argument("--reactions-only", action="store_true", help="run no projections")
    parser.add_argument(
        "--id",
        dest="worker_id",
        help="this worker's id in the group that shares out partitions (default: HOST:PID)",
    )
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a partition's lease expires this long after its owner's last heartbeat "
        "(a paused or cut-off worker's partitions are taken over after it; a killed "
        "worker's at the next heartbeat of another) (default %(default)s)",
    )
    parser.add_argument(
        "--durable-commits",
        action="store_true",
        help="make every batch's and reaction's commit wait for the disk "
        "(synchronous_commit); by default views, positions and reactions' ledger rows "
        "commit without waiting: a server crash then loses the last batches and executions "
        "whole, and the workers apply or run them again",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often the worker renews its leases and plans partitions (default %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--max-attempts", type=int, default=5, help="tries before parking")
    parser.add_argument(
        "--threads", type=int, default=8, help="dramatiq worker threads for reactions"
    )
    parser.add_argument(
        "--heartbeat-ttl",
        type=float,
        default=BrokerOptions.heartbeat_ttl_s,
        metavar="SECONDS",
        help="PostgreSQL broker: reaction messages claimed by a worker process that has not "
        "sent a heartbeat for this long are queued again (default %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics (Prometheus), /healthz and /readyz on this port (default: off)",
    )
    parser.add_argument(
        "--max-lag",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="/readyz turns red when a consumer lags more than this (default %(default)s)",
    )
    parser.set_defaults(run=_run)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def split_names(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Named projections and reactions, or an error naming the unknown ones."""
    unknown = [n for n in names if n not in PROJECTIONS and n not in REACTION_TYPES]
    if unknown:
        raise ConfigurationError(
            f"unknown projection or reaction name(s) {', '.join(unknown)}; projections: "
            f"{', '.join(PROJECTIONS)}; reactions: {', '.join(REACTION_TYPES)}"
        )
    return [n for n in names if n in PROJECTIONS], [n for n in names if n in REACTION_TYPES]


def build_reactions(
    names: Sequence[str],
    settings: Settings,
    *,
    worker_id: str,
    threads: int = 8,
    batch_size: int = 1000,
    gateway_url: str | None = None,
    poll: PollPolicy | None = None,
    broker_options: BrokerOptions | None = None,
    follow: bool = True,
    durable_commits: bool = False,
) -> ReactionRuntime:
    """The shop's named reactions with their followers, broker and dramatiq worker."""
    shop = Shop(application_env(settings))
    gateway_url = gateway_url or os.environ.get("PAYMENT_GATEWAY_URL")
    return reaction_runtime(
        shop_reactions(shop, gateway_url, list(names)),
        settings,
        worker_id=worker_id,
        broker_options=broker_options,
        worker_threads=threads,
        batch_size=batch_size,
        poll=poll,
        follow=follow,
        durable_commits=durable_commits,
    )


def select_projections(names: Sequence[str]) -> list[type[Projection]]:
    """The projections named (all when none are), or an error naming the unknown ones."""
    unknown = [n for n in names if n not in PROJECTIONS]
    if unknown:
        raise ConfigurationError(
            f"unknown projection(s) {', '.join(unknown)}; known: {', '.join(PROJECTIONS)}"
        )
    return [PROJECTIONS[n] for n in names] if names else list(PROJECTIONS.values())


def worker_factory(
    settings: Settings,
    *,
    worker_id: str,
    batch_size: int = 1000,
    retry: RetryPolicy | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    lease_ttl_s: float = 5.0,
    poll: PollPolicy | None = None,
    durable_commits: bool = False,
) -> Callable[[type[Projection], int, int], ProjectionWorker]:
    """Makes the worker of partition ``k`` of ``P`` of a projection: ``make(cls, k, P)``.
    The workers of one factory share the process's pool for reading the log."""
    pool, url = shared_pool(settings)
    recorder = PostgresEventRecorder(pool, settings.schema, notify_channel=settings.notify_channel)
    mapper = PydanticMapper()

    def make(projection: type[Projection], partition: int, partitions: int) -> ProjectionWorker:
        return ProjectionWorker(
            projection(),
            url=url,
            schema=settings.schema,
            recorder=recorder,
            mapper=mapper,
            worker_id=worker_id,
            batch_size=batch_size,
            retry=retry,
            on_batch=on_batch,
            notify_channel=settings.notify_channel,
            partition=partition,
            partitions=partitions,
            lease_ttl_s=lease_ttl_s,
            poll=poll,
            durable_commits=durable_commits,
        )

    return make


def build_workers(
    projections: Sequence[type[Projection]],
    settings: Settings,
    *,
    worker_id: str,
    batch_size: int = 1000,
    retry: RetryPolicy | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> list[ProjectionWorker]:
    """One single-partition worker per projection, each managing its own lease."""
    make = worker_factory(
        settings, worker_id=worker_id, batch_size=batch_size, retry=retry, on_batch=on_batch
    )
    return [make(p, 0, 1) for p in projections]


def build_group(
    projections: Sequence[type[Projection]],
    settings: Settings,
    *,
    worker_id: str,
    batch_size: int = 1000,
    retry: RetryPolicy | None = None,
    reactions: Sequence[Consumer] = (),
    heartbeat_s: float = 1.0,
    lease_ttl_s: float = 5.0,
    poll: PollPolicy | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    durable_commits: bool = False,
) -> WorkerGroup:
    """This process's member of the worker group: ``projections`` and the reaction
    followers ``reactions``, their partitions shared out with the other members."""
    make = worker_factory(
        settings,
        worker_id=worker_id,
        batch_size=batch_size,
        retry=retry,
        on_batch=on_batch,
        lease_ttl_s=lease_ttl_s,
        poll=poll,
        durable_commits=durable_commits,
    )
    consumers = [Consumer(p.name, p, partial(make, p)) for p in projections]
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
    )


def run_until(workers: Sequence[ProjectionWorker], stop: threading.Event) -> None:
    """Run each worker in a thread until ``stop`` is set; wait for all to finish."""
    threads = [
        threading.Thread(target=w.run, args=(stop,), name=f"worker-{w.name}", daemon=True)
        for w in workers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _run(args: argparse.Namespace) -> int:
    tune_gc()
    settings = Settings.from_env()
    worker_id = args.worker_id or default_worker_id()
    projection_names, reaction_names = split_names(args.names)
    if not args.names:
        projection_names, reaction_names = list(PROJECTIONS), list(REACTION_TYPES)
    if args.reactions_only:
        projection_names = []
    if args.projections_only:
        reaction_names = []
    projections = select_projections(projection_names) if projection_names else []
    runtime = (
        build_reactions(
            reaction_names,
            settings,
            worker_id=worker_id,
            threads=args.threads,
            batch_size=args.batch_size,
            broker_options=BrokerOptions(
                heartbeat_interval_s=args.heartbeat_ttl / 5,
                heartbeat_ttl_s=args.heartbeat_ttl,
                maintenance_interval_s=args.heartbeat_ttl / 2,
            ),
            follow=False,  # the group runs the followers, partitioned
            durable_commits=args.durable_commits,
        )
        if reaction_names
        else None
    )
    if not projections and runtime is None:
        raise ConfigurationError("nothing to run: name a projection or a reaction")
    group = build_group(
        projections,
        settings,
        worker_id=worker_id,
        batch_size=args.batch_size,
        retry=RetryPolicy(max_attempts=args.max_attempts),
        reactions=runtime.consumers if runtime is not None else (),
        heartbeat_s=args.heartbeat,
        lease_ttl_s=args.lease_ttl,
        durable_commits=args.durable_commits,
    )
    stop = stop_on_signals()
    logger.info(
        "worker %s running projections %s and reactions %s (broker: %s) on schema %s",
        worker_id,
        ", ".join(p.name for p in projections) or "none",
        ", ".join(reaction_names) or "none",
        broker_kind(settings.broker_url).value,
        settings.schema,
    )
    threads = [threading.Thread(target=group.run, args=(stop,), name="group")]
    if runtime is not None:
        threads.append(threading.Thread(target=runtime.run, args=(stop,), name="reactions"))
    server = None
    if args.metrics_port is not None:
        pool, _ = shared_pool(settings)
        monitor = Monitor(
            pool,
            settings.schema,
            projections=projections,
            reactions=[REACTION_TYPES[n] for n in reaction_names],
            workers=group.current_workers,
            postgres_broker=broker_kind(settings.broker_url) is BrokerKind.POSTGRES,
            max_lag_s=args.max_lag,
        )
        server = MonitoringServer(monitor, args.metrics_port).start()
        threads.append(threading.Thread(target=monitor.run, args=(stop,), name="monitor"))
        logger.info(
            "metrics at http://localhost:%d/metrics; health at /healthz and /readyz", server.port
        )
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # in slices, so the signal handlers run (see WorkerGroup.run)
            t.join(0.2)
    if server is not None:
        server.stop()
    logger.info("worker %s stopped", worker_id)
    return 0

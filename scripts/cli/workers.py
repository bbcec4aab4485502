"""``eventkit workers``: run the application's projections and reactions until SIGTERM or
Ctrl-C."""

from __future__ import annotations

import argparse
import errno
from typing import Any

from eventkit.bootstrap import stop_on_signals, tune_gc
from eventkit.cli.common import app_of, count, describe_app, port, seconds, settings_of
from eventkit.infrastructure.errors import ConfigurationError
from eventkit.runner import WorkerOptions, Workers


def register(commands: Any, parents: list[argparse.ArgumentParser], app_spec: str | None) -> None:
    parser = commands.add_parser(
        "workers",
        parents=parents,
        help="run the application's projections and reactions until SIGTERM or Ctrl-C",
        description="Run the application's projections and reactions (all by default) until "
        "SIGTERM or Ctrl-C. Several processes, on several machines, share the partitions out. "
        + describe_app(app_spec),
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="projections and reactions to run")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--projections-only", action="store_true", help="run no reactions")
    only.add_argument("--reactions-only", action="store_true", help="run no projections")
    parser.add_argument(
        "--id",
        dest="worker_id",
        help="this worker's id in the group that shares out partitions (default: HOST:PID)",
    )
    parser.add_argument(
        "--read-url",
        metavar="URL",
        help="read the log from this streaming replica (hot standby) of the database; views, "
        "positions, leases and ledgers are still written on the database "
        "(default: EVENTKIT_READ_URL, else the database itself)",
    )
    parser.add_argument(
        "--lease-ttl",
        type=seconds,
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
        type=seconds,
        default=1.0,
        metavar="SECONDS",
        help="how often the worker renews its leases and plans partitions (default %(default)s)",
    )
    parser.add_argument("--batch-size", type=count, default=1000, help="events per batch")
    parser.add_argument("--max-attempts", type=count, default=5, help="tries before parking")
    parser.add_argument(
        "--threads", type=count, default=8, help="dramatiq worker threads for reactions"
    )
    parser.add_argument(
        "--heartbeat-ttl",
        type=seconds,
        default=WorkerOptions.heartbeat_ttl_s,
        metavar="SECONDS",
        help="PostgreSQL broker: reaction messages claimed by a worker process that has not "
        "sent a heartbeat for this long are queued again (default %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve /metrics (Prometheus), /healthz and /readyz on this port (default: off)",
    )
    parser.add_argument(
        "--metrics-host",
        default=WorkerOptions.metrics_host,
        metavar="ADDRESS",
        help="the address the metrics port binds: 0.0.0.0 for every interface (a Prometheus "
        "or a Kubernetes probe on another host) (default %(default)s: this machine only)",
    )
    parser.add_argument(
        "--max-lag",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="/readyz turns red when a consumer lags more than this, or a reaction's "
        "oldest message waits longer (default %(default)s)",
    )
    parser.add_argument(
        "--stall-after",
        type=seconds,
        default=WorkerOptions.stall_s,
        metavar="SECONDS",
        help="/healthz turns red when a loop of the process has not turned for this long "
        "(time spent waiting for the database does not count) (default %(default)s)",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    tune_gc()
    workers = Workers(
        app_of(args),
        args.names,
        projections_only=args.projections_only,
        reactions_only=args.reactions_only,
        settings=settings_of(args),
        worker_id=args.worker_id,
        options=WorkerOptions(
            batch_size=args.batch_size,
            max_attempts=args.max_attempts,
            threads=args.threads,
            heartbeat_s=args.heartbeat,
            lease_ttl_s=args.lease_ttl,
            heartbeat_ttl_s=args.heartbeat_ttl,
            durable_commits=args.durable_commits,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            max_lag_s=args.max_lag,
            stall_s=args.stall_after,
        ),
    )
    stop = stop_on_signals()
    try:
        workers.start()
    except OSError as e:  # the metrics server's port: in use, or not ours to bind
        workers.stop()
        if args.metrics_port is None or e.errno not in (errno.EADDRINUSE, errno.EACCES):
            raise
        raise ConfigurationError(
            f"cannot serve metrics on port {args.metrics_port}: {e.strerror or e}"
        ) from None
    workers.wait(stop)
    return 0

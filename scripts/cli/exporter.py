"""``eventkit exporter``: serve every declared consumer's lag, state, dead letters and
reaction queues, read from the database, to Prometheus (like Kafka's lag exporters)."""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from eventkit.cli.common import app_of, describe_app, port, seconds, settings_of

logger = logging.getLogger(__name__)


def register(commands: Any, parents: list[argparse.ArgumentParser], app_spec: str | None) -> None:
    parser = commands.add_parser(
        "exporter",
        parents=parents,
        help="serve every consumer's lag and queues, read from the database, to Prometheus",
        description="Serve /metrics, /healthz and /readyz with every declared projection's "
        "and reaction's lag in events and seconds per partition, whether a live worker runs "
        "it, its open dead letters and a reaction's queue and oldest message age, all read "
        "from the database every --interval seconds, whether or not a worker runs the "
        "consumer, until SIGTERM or Ctrl-C. Run one beside the workers: their lag stays "
        "visible (and alerting) when every worker is down or frozen. " + describe_app(app_spec),
    )
    parser.add_argument(
        "--port", type=port, default=9188, help="the metrics port (default %(default)s)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the address it binds: 0.0.0.0 for every interface (default %(default)s)",
    )
    parser.add_argument(
        "--interval",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="how often it reads the database (default %(default)s)",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from eventkit.bootstrap import stop_on_signals
    from eventkit.infrastructure.broker import BrokerKind, broker_kind
    from eventkit.infrastructure.factory import existing_pool
    from eventkit.infrastructure.logfields import set_process_field
    from eventkit.projections.monitoring import Monitor, MonitoringServer
    from eventkit.runner import default_worker_id

    set_process_field("worker_id", f"exporter:{default_worker_id()}")
    app = app_of(args)
    settings = settings_of(args)
    # Read-only: it never starts the embedded server, creates or migrates the schema
    # (a reader role is enough).
    pool, _ = existing_pool(settings)
    monitor = Monitor(
        pool,
        settings.schema,
        projections=app.projections,
        reactions=app.reactions,
        runs=(),  # it runs no consumer: ready while the database answers
        postgres_broker=broker_kind(settings.broker_url) is BrokerKind.POSTGRES,
        interval_s=args.interval,
        stall_s=max(30.0, 3 * args.interval),
    )
    monitor.loops = lambda: [monitor.beat]
    server = MonitoringServer(monitor, args.port, args.host).start()
    logger.info(
        "exporter for %s on schema %s: metrics at %s/metrics; health at %s/healthz and %s/readyz",
        app.name,
        settings.schema,
        server.url,
        server.url,
        server.url,
    )
    stop = stop_on_signals()
    thread = threading.Thread(target=monitor.run, args=(stop,), name="monitor", daemon=True)
    thread.start()
    while not stop.wait(0.2):  # in slices: signal handlers run in the main thread
        pass
    server.stop()
    logger.info("exporter stopped")
    return 0

"""Run the library's workers inside this process, for a service that starts its own
processes instead of `eventkit workers`: ``python -m service.run [NAME ...]``."""

from __future__ import annotations

import os
import signal
import sys

import eventkit

from service import app


def main(names: list[str]) -> None:
    port = os.environ.get("LIBRARY_METRICS_PORT")  # /metrics, /healthz, /readyz when set
    with eventkit.Workers(app, names, metrics_port=int(port) if port else None) as workers:
        # SIGTERM (a container's stop) finishes the batches and messages in hand, then exits.
        signal.signal(signal.SIGTERM, lambda *_: workers.stop())
        workers.wait()


if __name__ == "__main__":
    main(sys.argv[1:])

"""A real ``eventkit`` process (workers or exporter) for the monitoring tests: its JSON log
lines collected as they come, its metrics and health endpoints asked over HTTP, and a proxy
in front of PostgreSQL that a test can take down to play a database outage."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import conninfo_to_dict

from tests.integration.cutting_proxy import CuttingProxy

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def series(text: str) -> Series:
    found = {}
    for metric in text_string_to_metric_families(text):
        for s in metric.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def matching(
    found: Series, metric: str, /, **labels: str
) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of ``metric`` whose labels include ``labels``."""
    return {
        sample_labels: v
        for (name, sample_labels), v in found.items()
        if name == metric and labels.items() <= dict(sample_labels).items()
    }


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    """Poll ``condition`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Process:
    """``python -m eventkit.cli --log-format json ARGS`` with the metrics port ``port``."""

    def __init__(self, args: Sequence[str], *, database_url: str, schema: str, port: int) -> None:
        env = {**os.environ, "DATABASE_URL": database_url, "EVENTKIT_SCHEMA": schema}
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self._popen = subprocess.Popen(
            [sys.executable, "-m", "eventkit.cli", "--log-format", "json", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._popen.stderr is not None
        for line in self._popen.stderr:
            self.lines.append(line.rstrip("\n"))

    def log(self) -> list[dict[str, Any]]:
        """The JSON log so far (every line must be JSON)."""
        return [json.loads(line) for line in list(self.lines) if line.strip()]

    def get(self, path: str) -> tuple[int, str]:
        return get(self.base + path)

    def metrics(self) -> Series:
        status, text = self.get("/metrics")
        assert status == 200, text
        return series(text)

    def answers(self) -> bool:
        try:
            return self.get("/healthz")[0] in (200, 503)
        except (urllib.error.URLError, ConnectionError):
            assert self._popen.poll() is None, "\n".join(self.lines[-30:])
            return False

    def signal(self, number: int) -> None:
        self._popen.send_signal(number)

    def stop(self) -> int:
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
        try:
            code = self._popen.wait(timeout=60)
        finally:
            if self._popen.poll() is None:
                self._popen.kill()
                self._popen.wait()
            self._reader.join(timeout=10)
            if self._popen.stderr is not None:
                self._popen.stderr.close()
        return code


class OutageProxy(CuttingProxy):
    """Forwards 127.0.0.1:PORT to the server of ``url`` until :meth:`down`: then every
    connection through it is cut, and new ones are closed at once, until :meth:`up`."""

    def __init__(self, url: str) -> None:
        self._up = True
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        super().__init__(url)
        self.port = int(conninfo_to_dict(self.url)["port"])

    def down(self) -> None:
        with self._lock:
            self._up = False
            for s in self._open:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    def up(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self.down()
        super().close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._up:
                    client.close()
                    continue
                server = socket.socket(self._target[0], socket.SOCK_STREAM)
                server.connect(self._target[1])
                self._open += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool = False) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

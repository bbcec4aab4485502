"""A proxy in front of the test server that can lose a statement's answer on the way back.

Armed, it drops the next answer the server sends that carries a command's completion (an
``INSERT`` or ``SELECT`` tag) and closes both sides of that connection: the server has
carried the statement out (and, in autocommit, committed it: PostgreSQL sends the answer
after the commit), and the client only sees its connection lost.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

_COMPLETIONS = (b"INSERT 0 ", b"SELECT ")


class CuttingProxy:
    """Listens on 127.0.0.1 and forwards to the server of ``url``."""

    def __init__(self, url: str, completions: tuple[bytes, ...] = _COMPLETIONS) -> None:
        """``completions``: the command tags whose answer an armed proxy drops."""
        self._completions = completions
        info: dict[str, Any] = conninfo_to_dict(url)
        host = str(info.get("host") or "/tmp")
        port = int(info.get("port") or 5432)
        self._target: tuple[int, Any] = (
            (socket.AF_UNIX, str(Path(host) / f".s.PGSQL.{port}"))
            if host.startswith("/")
            else (socket.AF_INET, (host, port))
        )
        self._listener = socket.create_server(("127.0.0.1", 0))
        proxied = {k: v for k, v in info.items() if k not in ("host", "hostaddr", "port")}
        self.url = make_conninfo(
            "", **proxied, host="127.0.0.1", port=self._listener.getsockname()[1]
        )
        self._armed = threading.Event()
        self._skip = 0
        #: Set once an answer was dropped.
        self.cut = threading.Event()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, skip: int = 0) -> None:
        """Drop the answer of the completed statement after the next ``skip`` ones, and
        that connection with it."""
        self.cut.clear()
        self._skip = skip
        self._armed.set()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(self._target[0], socket.SOCK_STREAM)
            server.connect(self._target[1])
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and self._armed.is_set() and any(c in data for c in self._completions):
                    if self._skip == 0:
                        self._armed.clear()
                        self.cut.set()
                        break
                    self._skip -= 1
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@contextmanager
def cutting_proxy(
    url: str, completions: tuple[bytes, ...] = _COMPLETIONS
) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(url, completions)
    try:
        yield proxy
    finally:
        proxy.close()

"""A small local payment gateway for the demo and the tests: records calls, can fail.

``POST /charges`` with a JSON body and an ``Idempotency-Key`` header answers
``{"status": "captured"}`` (or ``declined`` for amounts over ``decline_over``); a key seen
before gets the first answer again. While :attr:`FakeGateway.failing` is set it answers
503, as a gateway in trouble would. Every call is recorded with its key, so a test can
check that each payment was charged once per key and duplicates only carried the same key.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Call:
    idempotency_key: str
    payment_id: str
    answered: int


class FakeGateway:
    """The gateway, served from a thread on 127.0.0.1 (port 0: any free port)."""

    def __init__(self, port: int = 0, decline_over: Decimal | None = None) -> None:
        self.decline_over = decline_over
        self.failing = False
        self.calls: list[Call] = []
        self._answers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                key = self.headers.get("Idempotency-Key") or ""
                status, answer = gateway._answer(key, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the gateway's calls are what the caller inspects

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-gateway", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeGateway:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        payment_id = str(body.get("payment_id", ""))
        with self._lock:
            if not key or not payment_id:
                status, answer = 400, {"error": "Idempotency-Key and payment_id are required"}
            elif self.failing:
                status, answer = 503, {"error": "the gateway is failing (told to)"}
            elif key in self._answers:
                status, answer = 200, self._answers[key]
            else:
                amount = Decimal(str(body.get("amount", "0")))
                if self.decline_over is not None and amount > self.decline_over:
                    answer = {"status": "declined", "reason": f"amount {amount} over the limit"}
                else:
                    answer = {"status": "captured"}
                status = 200
                self._answers[key] = answer
            self.calls.append(Call(key, payment_id, status))
        return status, answer

    def keys_per_payment(self) -> dict[str, set[str]]:
        """The idempotency keys each payment was charged with (successful calls only)."""
        with self._lock:
            keys: dict[str, set[str]] = {}
            for call in self.calls:
                if call.answered == 200:
                    keys.setdefault(call.payment_id, set()).add(call.idempotency_key)
            return keys

    def failed_calls(self) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c.answered != 200)

    def duplicate_keys(self) -> Counter[str]:
        """Keys that reached the gateway more than once with an answer."""
        with self._lock:
            counts = Counter(c.idempotency_key for c in self.calls if c.answered == 200)
        return Counter({k: n for k, n in counts.items() if n > 1})


def _port(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port within 0..65535")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Serve a gateway on a port until Ctrl-C: ``python -m eventkit.shop.gateway --port 8099``."""
    import argparse
    import errno

    parser = argparse.ArgumentParser(
        prog="python -m eventkit.shop.gateway",
        description="A fake payment gateway for the shop's charge_payments reaction: POST "
        "/charges answers captured (declined over --decline-over); set PAYMENT_GATEWAY_URL "
        "to the URL it prints.",
    )
    parser.add_argument(
        "port",
        nargs="?",
        type=_port,
        default=8099,
        metavar="PORT",
        help="the port on 127.0.0.1 (default %(default)s; 0: any free port)",
    )
    parser.add_argument(
        "--decline-over", type=Decimal, metavar="AMOUNT", help="decline charges above AMOUNT"
    )
    args = parser.parse_args(argv)
    try:
        gateway = FakeGateway(args.port, decline_over=args.decline_over)
    except OSError as e:
        reason = "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        parser.exit(1, f"{parser.prog}: error: port {args.port}: {reason}\n")
    print(f"fake payment gateway at {gateway.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        gateway._server.serve_forever()
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())

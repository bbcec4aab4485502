"""Log formats for eventkit's commands: text (default) or JSON lines (``--log-format json``).

Both redact passwords in URLs (``DATABASE_URL``, ``BROKER_URL``) wherever they appear in a
message. The JSON format adds the fields a record carries in ``extra`` (``consumer``, the name of a
projection or reaction, ``kind``, ``projection`` or ``reaction``, and ``partition``,
``position``, ``stream``, ``version``, ``message_id``, ``error_class``), the process's
``worker_id`` (see :mod:`infrastructure.logfields`) and, for a line that carries an
exception, its class as ``error_class``, so lines can be filtered by worker, consumer,
position or error without parsing the text.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from eventkit.infrastructure.logfields import PROCESS, error_class
from eventkit.infrastructure.settings import redact

#: Fields a log record may carry in ``extra``, copied into JSON lines.
FIELDS = ("consumer", "kind", "partition", "position", "stream", "version", "message_id")


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        line.update(PROCESS)
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value if isinstance(value, int | float | bool) else str(value)
        cls = error_class(record)
        if cls is not None:
            line["error_class"] = cls
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line)


def configure(level: int, log_format: str) -> None:
    """Log to standard error at ``level`` in ``log_format`` (``text`` or ``json``).

    Like ``logging.basicConfig``, leaves logging alone where someone else configured it
    already (a host application, pytest), apart from a handler of an earlier call.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "eventkit", False)]
    if len(ours) != len(root.handlers):
        return
    for existing in ours:
        root.removeHandler(existing)
    handler = logging.StreamHandler()
    handler.eventkit = True  # type: ignore[attr-defined]
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level)

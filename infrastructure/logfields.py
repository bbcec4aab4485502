"""Fields every log line of this process carries in the JSON format: ``worker_id`` (set by
a worker process, or by ``eventkit exporter``), besides the fields a record brings in
``extra``."""

from __future__ import annotations

import logging

#: The process's own fields, by name.
PROCESS: dict[str, str] = {}


def set_process_field(name: str, value: str) -> None:
    PROCESS[name] = value


def error_class(record: logging.LogRecord) -> str | None:
    """The class of the error a record reports: its ``error_class`` field, else the class
    of the exception it carries, else None."""
    given = getattr(record, "error_class", None)
    if given is not None:
        return str(given)
    if record.exc_info and record.exc_info[0] is not None:
        return record.exc_info[0].__name__
    return None

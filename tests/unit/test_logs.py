"""Log lines: JSON with the fields of the event involved, and never a password."""

from __future__ import annotations

import json
import logging

from eventkit.cli.logs import JsonFormatter, RedactingFormatter

URL = "postgresql://app:s3cret@db.internal:5432/shop"


def record(message: str, *args: object, **fields: object) -> logging.LogRecord:
    r = logging.LogRecord(
        "eventkit.projections.follower", logging.WARNING, __file__, 1, message, args, None
    )
    for name, value in fields.items():
        setattr(r, name, value)
    return r


def test_json_lines_carry_the_consumer_and_position_fields() -> None:
    line = json.loads(
        JsonFormatter().format(
            record(
                "handler failed on stream %s",
                "c0ffee",
                consumer="order_summaries",
                kind="projection",
                partition=0,
                position="812/4051",
                stream="c0ffee",
                version=3,
            )
        )
    )
    assert line["level"] == "warning"
    assert line["logger"] == "eventkit.projections.follower"
    assert line["message"] == "handler failed on stream c0ffee"
    assert (
        line["consumer"],
        line["kind"],
        line["partition"],
        line["position"],
        line["version"],
    ) == (
        "order_summaries",
        "projection",
        0,
        "812/4051",
        3,
    )
    assert "message_id" not in line


def test_no_format_prints_a_password_from_a_url() -> None:
    r = record("cannot reach %s", URL)
    for formatter in (JsonFormatter(), RedactingFormatter("%(message)s")):
        text = formatter.format(r)
        assert "s3cret" not in text
        assert "app:***@db.internal" in text

"""The log's values: a notification assembled on the read path equals the constructor's."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from uuid import uuid4

from eventkit.infrastructure.log import LoggedNotification, Position, assemble


def test_an_assembled_notification_is_the_one_its_constructor_makes() -> None:
    values = {
        "originator_id": uuid4(),
        "originator_version": 3,
        "topic": "shop.Order.Placed",
        "state": b'{"total": "9.50"}',
        "id": 41,
        "transaction_id": 977,
        "recorded_at": datetime(2026, 12, 3, tzinfo=UTC),
        "correlation_id": "req-1",
        "causation_id": None,
        "headers": {"traceparent": "00-1-2-01"},
    }
    made = LoggedNotification(**values)
    assembled = assemble(**values)
    assert type(assembled) is LoggedNotification
    assert assembled == made
    assert repr(assembled) == repr(made)
    assert assembled.position == Position(977, 41)
    assert dataclasses.asdict(assembled) == dataclasses.asdict(made)
    # assemble() fills every field, and the class has nothing an __init__ would also run.
    assert {f.name for f in dataclasses.fields(LoggedNotification)} == set(values)
    assert not hasattr(LoggedNotification, "__post_init__")
    assert "__slots__" not in vars(LoggedNotification)

from __future__ import annotations

from uuid import uuid4

from eventsourcing.persistence import StoredEvent

from eventkit.infrastructure.log import Position
from eventkit.infrastructure.recorder import PostgresEventRecorder
from tests.integration.log_support import wait_until_readable


def test_append_then_read(recorder: PostgresEventRecorder) -> None:
    stream = uuid4()
    ids = recorder.insert_events(
        [StoredEvent(stream, 1, "t", b"{}"), StoredEvent(stream, 2, "t", b"{}")]
    )
    wait_until_readable(recorder)
    got = recorder.read_notifications(Position.ORIGIN, 10)
    assert [n.id for n in got] == ids

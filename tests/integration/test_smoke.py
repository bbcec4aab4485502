from __future__ import annotations

from uuid import uuid4

from eventsourcing.persistence import StoredEvent

from eventkit.infrastructure.log import Position
from eventkit.infrastructure.recorder import PostgresEventRecorder


def test_append_then_read(recorder: PostgresEventRecorder) -> None:
    stream = uuid4()
    ids = recorder.insert_events(
        [StoredEvent(stream, 1, "t", b"{}"), StoredEvent(stream, 2, "t", b"{}")]
    )
    got = recorder.read_notifications(Position.ORIGIN, 10)
    assert [n.id for n in got] == ids

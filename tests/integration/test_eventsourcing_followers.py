"""eventsourcing's own followers on eventkit: refused, with eventkit's followers named.

eventsourcing's followers (``ProjectionRunner`` through ``subscribe(gt=ID)``, a
``System``'s ``ProcessApplication``) resume from the last notification id they saw.
eventkit's writers take no table lock, so ids are not commit order: in the interleaving
below, 40 events that drew ids 1..40 commit after a save that drew 41..80, and such a
follower would skip the first 40 (issue 13 saw exactly that). eventkit refuses them with
an error that names what to use instead, and its own followers, which track positions,
see all 80 once; the notification log's read API still reads every event.
"""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import Application as EventsourcingApplication
from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.projection import Projection, ProjectionRunner
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System

from eventkit.infrastructure.errors import UnsupportedFollowerError
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.recorder import PostgresEventRecorder
from tests.integration.test_gap_safety import Follower, append_in, event, open_transaction


def interleave(recorder: PostgresEventRecorder, database_url: str) -> tuple[list[int], list[int]]:
    """40 events by COPY drawing ids 1..40 commit after a save that drew 41..80."""
    first, second = uuid4(), uuid4()
    with open_transaction(database_url) as slow:
        early = append_in(slow, recorder, [event(first, v) for v in range(1, 41)])
        late = recorder.insert_events([event(second, v) for v in range(1, 41)])
        slow.commit()
    assert early == list(range(1, 41))  # a fresh schema: its sequence starts at 1
    assert late == list(range(41, 81))
    return early, late


class Counts(Projection[POPOTrackingRecorder]):
    name = "counts"
    topics: ClassVar[tuple[str, ...]] = ()

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)


def test_a_projection_runner_is_refused_and_eventkit_s_follower_sees_every_event_once(
    recorder: PostgresEventRecorder, database_url: str, app_env: dict[str, str]
) -> None:
    early, late = interleave(recorder, database_url)
    # The application records with eventkit; the runner's view is eventsourcing's own.
    env = {**app_env, "COUNTS_PERSISTENCE_MODULE": "eventsourcing.popo"}
    with pytest.raises(UnsupportedFollowerError) as refused:
        ProjectionRunner(
            application_class=EventsourcingApplication,
            projection_class=Counts,
            view_class=POPOTrackingRecorder,
            env=env,
        )
    message = str(refused.value)
    assert "subscribe(gt=None)" in message
    assert "eventkit.Projection" in message
    assert "`eventkit workers`" in message
    # Restarted from the highest id a view recorded, as the runner was: refused too.
    with pytest.raises(UnsupportedFollowerError, match=r"subscribe\(gt=80\)"):
        recorder.subscribe(gt=80)

    follower = Follower(recorder, limit=7)
    follower.drain(expect=80)
    # Log order: the transaction that began first, then the other; each event once.
    assert [n.id for n in follower.seen] == early + late

    # The read API reads the whole log by id once both have committed.
    ids = [n.id for n in recorder.select_notifications(start=1, limit=100)]
    assert ids == list(range(1, 81))


class Leader(EventsourcingApplication):
    pass


class Reactor(ProcessApplication[UUID]):
    @singledispatchmethod
    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        """Nothing: the follower is refused before it reads."""


def test_a_system_s_process_application_is_refused(app_env: dict[str, str]) -> None:
    with pytest.raises(UnsupportedFollowerError, match="ProcessRecorder") as refused:
        SingleThreadedRunner(System(pipes=[[Leader, Reactor]]), env=app_env)
    assert "eventkit.Projection" in str(refused.value)


def test_the_notification_log_read_api_works_through_an_application(
    recorder: PostgresEventRecorder, database_url: str, app_env: dict[str, str]
) -> None:
    interleave(recorder, database_url)
    app = EventsourcingApplication(app_env)
    section = app.notification_log["1,10"]
    assert [item.id for item in section.items] == list(range(1, 11))
    assert section.next_id == "11,20"
    assert [n.id for n in app.notification_log.select(start=41, limit=5)] == [41, 42, 43, 44, 45]
    assert recorder.max_notification_id() == 80
    assert recorder.head() > Position.ORIGIN  # type: ignore[operator]

"""The follower's parts that need no database: its idle wait, and what each applier tells it
(the follower itself runs against PostgreSQL in tests/integration)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any, cast
from uuid import uuid4

import pytest
from prometheus_client import REGISTRY
from psycopg import sql

from eventkit.domain.shop.orders import Order
from eventkit.infrastructure.broker import BrokerKind, Handover
from eventkit.infrastructure.errors import EventDecodingError
from eventkit.infrastructure.log import LoggedNotification
from eventkit.projections.applier import Applier, ProjectionApplier
from eventkit.projections.follower import Idle, PollPolicy
from eventkit.projections.projection import Context, Projection, Table, handles
from eventkit.projections.reaction import Reaction, ReactionContext
from eventkit.projections.reactor import HandoverApplier


class Placements(Projection):
    name = "placements"
    tables = (Table("placements", "CREATE TABLE {table} (order_id uuid PRIMARY KEY)"),)

    @handles
    def placed(self, event: Order.Placed, context: Context) -> None:
        context.execute("INSERT INTO {placements} (order_id) VALUES (%s)", (event.originator_id,))


class Thanks(Reaction):
    name = "thanks"

    @handles
    def placed(self, event: Order.Placed, context: ReactionContext) -> None:
        pass


def notification(topic: str) -> LoggedNotification:
    return LoggedNotification(uuid4(), 1, topic, b"{}", 7, 812, datetime.now(UTC))


def test_an_idle_wait_doubles_up_to_the_maximum_and_a_read_resets_it() -> None:
    idle = Idle(PollPolicy(min_interval_s=0.001, max_interval_s=0.004), None, "projection", "idle")
    stop = threading.Event()
    stop.set()  # every wait returns at once
    labels = {"kind": "projection", "consumer": "idle", "cause": "poll"}
    before = REGISTRY.get_sample_value("eventkit_follower_wakeups_total", labels) or 0.0
    intervals = []
    for _ in range(4):
        intervals.append(idle.interval)
        idle.wait(cast(Any, None), stop)  # no channel: the connection is not used
    assert intervals == [0.001, 0.002, 0.004, 0.004]
    idle.busy()
    assert idle.interval == 0.001
    assert REGISTRY.get_sample_value("eventkit_follower_wakeups_total", labels) == before + 4


def test_a_projection_applier_decodes_events_and_keeps_order_per_stream() -> None:
    applier: Applier = ProjectionApplier(Placements(), "shop", table_suffix="__rebuild")
    assert (applier.kind, applier.sequenced, applier.observes_latency) == (
        "projection",
        True,
        True,
    )
    assert applier.consumer is Placements
    assert applier.tables == {"placements": sql.Identifier("shop", "placements__rebuild")}
    with pytest.raises(EventDecodingError, match="no-such-type"):
        applier.decode(notification("no-such-type"))


def test_a_reaction_follower_hands_over_undecoded_and_unordered() -> None:
    handover = Handover(BrokerKind.POSTGRES, "shop")
    applier: Applier = HandoverApplier(Thanks, "shop", handover)
    assert (applier.kind, applier.sequenced, applier.observes_latency) == (
        "reaction",
        False,
        False,
    )
    assert applier.consumer is Thanks
    assert applier.tables == {"target": handover.target}
    n = notification("Order.Placed")
    assert applier.decode(n) is n  # the actor loads the event, not the follower

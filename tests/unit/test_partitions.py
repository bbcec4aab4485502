"""Partition keys and the group's plan: pure functions, no database."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from eventkit.infrastructure.log import LoggedNotification
from eventkit.infrastructure.partitions import Partition
from eventkit.projections.group import plan_for


@pytest.mark.parametrize("partitions", [1, 2, 3, 8, 13, 64])
@pytest.mark.parametrize("members", [1, 2, 3, 4, 7])
def test_the_plan_gives_every_partition_to_exactly_one_member_in_fair_shares(
    partitions: int, members: int
) -> None:
    ids = [f"host:{1000 + i}" for i in range(members)]
    plans = [plan_for("order_summaries", partitions, ids, me) for me in ids]
    owned = [k for p in plans for k in p.mine]
    assert sorted(owned) == list(range(partitions))
    shares = [len(p.mine) for p in plans]
    assert max(shares) - min(shares) <= 1


def test_single_partition_consumers_spread_over_members() -> None:
    ids = ["a", "b"]
    names = [f"projection_{i}" for i in range(20)]
    owners = {name: next(m for m in ids if plan_for(name, 1, ids, m).mine) for name in names}
    assert set(owners.values()) == {"a", "b"}


def test_every_member_computes_the_same_plan_whatever_order_it_sees_members_in() -> None:
    ids = ["c", "a", "b"]
    assert plan_for("x", 8, ids, "a") == plan_for("x", 8, list(reversed(ids)), "a")


def _notification(stream: str = "", topic: str = "shop:Order.Placed") -> LoggedNotification:
    return LoggedNotification(uuid4(), 1, topic, b"{}", 1, 1, datetime(2026, 1, 1, tzinfo=UTC))


def test_a_key_function_puts_each_event_in_exactly_one_partition() -> None:
    def key(n: LoggedNotification) -> str:
        return str(n.originator_id)

    events = [_notification() for _ in range(200)]
    parts = [Partition(key, 5, k) for k in range(5)]
    for n in events:
        assert sum(p.contains(n) for p in parts) == 1
    assert all(any(p.contains(n) for n in events) for p in parts)


def test_stream_and_type_keys_are_filtered_in_sql_and_one_partition_is_no_filter() -> None:
    assert Partition("stream", 4, 1).predicate("e") is not None
    assert Partition("type", 4, 1).predicate("e") is not None
    assert Partition("stream", 1, 0).predicate("e") is None
    assert Partition(lambda n: "k", 4, 1).predicate("e") is None


@pytest.mark.parametrize(
    ("count", "index", "key", "message"),
    [
        (0, 0, "stream", "between 1 and 1024"),
        (2000, 0, "stream", "between 1 and 1024"),
        (4, 4, "stream", "not one of 0..3"),
        (4, -1, "stream", "not one of 0..3"),
        (4, 0, "customer", "partition key must be"),
    ],
)
def test_bad_partitions_are_refused_with_what_is_wrong(
    count: int, index: int, key: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Partition(key, count, index)  # type: ignore[arg-type]

"""No reader of the notification log ever passes an event that commits later.

A notification id is drawn when a row is inserted but becomes visible when its transaction
commits, so a transaction holding a lower id can commit after one holding a higher id. These
tests hold transactions open on purpose, in every order, and check that a follower which
records the position of the last notification it read sees every committed event exactly
once, in per-stream order. ``test_an_unguarded_reader_would_skip`` shows that the same
scenario does make a reader skip when the guard is taken away, so the tests can fail.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID, uuid4

import psycopg
import psycopg_pool
import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import eventkit.infrastructure.recorder as recorder_module
from eventkit.cli import main
from eventkit.infrastructure.log import LoggedNotification, Position
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.projections import status as status_module
from eventkit.projections.status import autovacuum_warning, server_warnings


@contextmanager
def open_transaction(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose statements run in one transaction until committed or rolled back."""
    with psycopg.connect(url, autocommit=False) as conn:
        yield conn


def append_in(
    conn: psycopg.Connection[Any], recorder: PostgresEventRecorder, events: list[StoredEvent]
) -> list[int]:
    """Append through the recorder's own write path, inside the caller's transaction."""
    rows = [(UUID(str(e.originator_id)), e.originator_version, e.topic, e.state) for e in events]
    return recorder._write(conn, rows)


def event(stream: UUID, version: int, topic: str = "Tested") -> StoredEvent:
    return StoredEvent(stream, version, topic, b'{"n": %d}' % version)


class Follower:
    """Reads the log after a recorded position, as a follower does."""

    def __init__(self, recorder: PostgresEventRecorder, limit: int = 100) -> None:
        self.recorder = recorder
        self.position = Position.ORIGIN
        self.limit = limit
        self.seen: list[LoggedNotification] = []

    def poll(self) -> list[LoggedNotification]:
        batch = self.recorder.read_notifications(self.position, self.limit)
        if batch:
            self.position = batch[-1].position
            self.seen.extend(batch)
        return batch

    def drain(self, expect: int = 0, timeout: float = 10.0) -> None:
        """Read to the head; wait (up to ``timeout``) until at least ``expect`` were seen.

        Other sessions' transactions anywhere on the server delay when ours become
        readable, so a test that knows how many events to expect waits for them.
        """
        deadline = time.monotonic() + timeout
        while True:
            while self.poll():
                pass
            if len(self.seen) >= expect or time.monotonic() > deadline:
                return
            time.sleep(0.01)

    def drain_until_seen(self, ids: set[int], timeout: float = 10.0) -> None:
        """Read to the head until every one of ``ids`` was seen, or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while True:
            while self.poll():
                pass
            if ids <= {n.id for n in self.seen} or time.monotonic() > deadline:
                return
            time.sleep(0.01)


def test_a_later_commit_waits_for_an_earlier_open_transaction(
    recorder: PostgresEventRecorder, database_url: str
) -> None:
    follower = Follower(recorder)
    early, late = uuid4(), uuid4()
    with open_transaction(database_url) as slow:
        [low_id] = append_in(slow, recorder, [event(early, 1)])
        [high_id] = recorder.insert_events([event(late, 1)])
        assert low_id < high_id

        # The later event has committed, but an earlier transaction is still open: the
        # reader must not move past it.
        assert follower.poll() == []

        slow.commit()

    follower.drain(expect=2)
    assert [n.id for n in follower.seen] == [low_id, high_id]


def test_a_transaction_that_drew_its_id_later_but_committed_first(
    recorder: PostgresEventRecorder, database_url: str
) -> None:
    """Ids and transaction ids disagree: the log follows transactions, and skips nothing."""
    follower = Follower(recorder, limit=1)
    a, b = uuid4(), uuid4()
    with open_transaction(database_url) as first, open_transaction(database_url) as second:
        # `first` takes its transaction id now, with an event...
        [a1] = append_in(first, recorder, [event(a, 1)])
        # ...`second` draws an id and commits...
        [b1] = append_in(second, recorder, [event(b, 1)])
        second.commit()
        # ...then `first` draws a higher id than `second`'s, and commits last.
        [a2] = append_in(first, recorder, [event(a, 2)])
        assert a1 < b1 < a2
        assert follower.poll() == []
        first.commit()

    follower.drain(expect=3)
    # `first` started first: its events come first and together, then `second`'s.
    assert [n.id for n in follower.seen] == [a1, a2, b1]


def test_a_rolled_back_transaction_leaves_a_gap_that_nobody_waits_for(
    recorder: PostgresEventRecorder, database_url: str
) -> None:
    follower = Follower(recorder)
    with open_transaction(database_url) as doomed:
        append_in(doomed, recorder, [event(uuid4(), 1)])
        [kept] = recorder.insert_events([event(uuid4(), 1)])
        assert follower.poll() == []
        doomed.rollback()
    follower.drain(expect=1)
    assert [n.id for n in follower.seen] == [kept]


def test_an_unguarded_reader_would_skip(
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scenario above really races: without the guard, the early event is lost."""
    monkeypatch.setattr(recorder_module, "_SETTLED", "TRUE")
    unguarded = PostgresEventRecorder(pool, schema)
    follower = Follower(unguarded)
    with open_transaction(database_url) as slow:
        [low_id] = append_in(slow, unguarded, [event(uuid4(), 1)])
        [high_id] = unguarded.insert_events([event(uuid4(), 1)])
        assert [n.id for n in follower.poll()] == [high_id]
        slow.commit()
    follower.drain(expect=1)
    assert low_id not in [n.id for n in follower.seen]


def test_the_reader_is_held_back_and_says_by_whom(
    recorder: PostgresEventRecorder, database_url: str
) -> None:
    with open_transaction(database_url) as idle:
        idle.execute("SET application_name = 'long_migration'")
        append_in(idle, recorder, [event(uuid4(), 1)])
        row = idle.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert row is not None
        holder = recorder.oldest_open_transaction()
        assert holder is not None
        # Ours, unless an older transaction elsewhere in the cluster holds readers back.
        assert holder.transaction_id <= row[0]
        if holder.transaction_id == row[0]:
            assert holder.application_name == "long_migration"
            assert "long_migration" in holder.describe()
    after = recorder.oldest_open_transaction()
    assert after is None or after.application_name != "long_migration"


def test_status_warns_of_a_transaction_that_holds_followers_back(
    recorder: PostgresEventRecorder,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def held(hold_s: float) -> list[str]:
        warnings = server_warnings(recorder.pool, recorder.schema, hold_s=hold_s)
        return [w for w in warnings if w.startswith("followers cannot read past")]

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", recorder.schema)
    with open_transaction(database_url) as idle:
        idle.execute("SET application_name = 'long_migration'")
        append_in(idle, recorder, [event(uuid4(), 1)])
        holder = recorder.oldest_open_transaction()
        assert holder is not None
        assert holder.open_for_s is not None
        [warning] = held(0.0)
        assert f"transaction {holder.transaction_id} (backend pid {holder.pid}" in warning
        assert held(3600.0) == []  # younger than that: a worker's batch, not worth a word
        monkeypatch.setattr(status_module, "HOLD_WARNING_S", 0.0)
        assert main(["status", "--json"]) == 0
        reported = json.loads(capsys.readouterr().out)["warnings"]
        assert any(w.startswith("followers cannot read past") for w in reported)
        assert main(["status"]) == 0
        assert "warning: followers cannot read past transaction" in capsys.readouterr().out
    assert not any("long_migration" in w for w in held(0.0))


def test_autovacuum_is_warned_of_exactly_when_the_server_has_it_off(
    pool: psycopg_pool.ConnectionPool, recorder: PostgresEventRecorder
) -> None:
    with pool.connection() as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
        warning = autovacuum_warning(conn)
    assert row is not None
    assert (warning is not None) == (row[0] == "off")
    assert (warning in server_warnings(pool, recorder.schema)) == (warning is not None)


def test_events_of_one_transaction_are_contiguous_in_log_order(
    recorder: PostgresEventRecorder,
) -> None:
    """What eventsourcing's non-interleaving case asks of ids holds for log positions."""
    streams = [uuid4() for _ in range(4)]
    errors: list[BaseException] = []

    def save(stream: UUID) -> None:
        try:
            recorder.insert_events([event(stream, v) for v in range(1, 1001)])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=save, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    follower = Follower(recorder, limit=333)
    follower.drain(expect=4000)
    runs = [
        n.originator_id
        for i, n in enumerate(follower.seen)
        if i == 0 or follower.seen[i - 1].originator_id != n.originator_id
    ]
    assert sorted(runs, key=str) == sorted(streams, key=str)


# -- random interleavings ----------------------------------------------------------------

#: Followers read through log_horizon(); log_writer_horizon() is the part of it that reads
#: pg_locks, which log_horizon() uses only once a committed row has waited 10 ms. Reading
#: through it alone works that part on every read.
HORIZONS = ["log_horizon", "log_writer_horizon"]

# A step is (writer, action, size): "append" size events in the writer's open transaction
# (opening one if needed), "commit", "rollback", or a "read" of at most size notifications.
STEPS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),
        st.sampled_from(["append", "append", "commit", "rollback", "read"]),
        st.sampled_from([1, 2, 3, 40]),  # 40 exceeds COPY_THRESHOLD: both write paths
    ),
    min_size=1,
    max_size=40,
)


#: Always tried besides the random ones: the classic skip (a transaction that appended
#: first commits after a later one was read), the same through COPY and partial reads, and
#: a rolled-back transaction's gap.
EXAMPLES: list[list[tuple[int, str, int]]] = [
    [(0, "append", 1), (1, "append", 1), (1, "commit", 1), (2, "read", 40)],
    [
        (0, "append", 40),
        (1, "append", 2),
        (1, "commit", 1),
        (3, "read", 1),
        (0, "commit", 1),
        (3, "read", 40),
    ],
    [(0, "append", 1), (1, "append", 1), (0, "rollback", 1), (1, "commit", 1), (2, "read", 3)],
]


def interleavings(max_examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Run a test taking ``steps`` on ``max_examples`` random interleavings and the
    :data:`EXAMPLES`."""

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        for steps in reversed(EXAMPLES):
            test = example(steps=steps)(test)
        return settings(
            max_examples=max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )(given(steps=STEPS)(test))

    return decorate


@interleavings(max_examples=60)
@pytest.mark.parametrize("horizon", HORIZONS)
def test_random_interleavings_are_seen_exactly_once_in_stream_order(
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    horizon: str,
    steps: list[tuple[int, str, int]],
) -> None:
    monkeypatch.setattr(recorder_module, "HORIZON_FUNCTION", horizon)
    recorder = PostgresEventRecorder(pool, schema)
    check_interleaving(steps, recorder, recorder, database_url)


def check_interleaving(
    steps: list[tuple[int, str, int]],
    recorder: PostgresEventRecorder,
    reader: PostgresEventRecorder,
    database_url: str,
    *,
    before_read: Callable[[], None] = lambda: None,
) -> None:
    """Run ``steps`` with four writers appending through ``recorder`` in transactions of
    their own, a follower reading through ``reader`` (the same server, or a standby of it:
    ``before_read`` waits for its replay); then check that the follower saw every committed
    event once, none other, in per-stream order."""
    follower = Follower(reader)
    before_read()
    follower.position = reader.head() or Position.ORIGIN
    connections = [psycopg.connect(database_url, autocommit=False) for _ in range(4)]
    streams = [uuid4() for _ in range(4)]  # one stream per writer: appends never block
    committed_version = [0] * 4
    pending: list[list[int]] = [[] for _ in range(4)]
    committed: dict[int, tuple[UUID, int]] = {}
    try:
        for writer, action, size in steps:
            conn = connections[writer]
            if action == "append":
                first = committed_version[writer] + len(pending[writer]) + 1
                versions = list(range(first, first + size))
                ids = append_in(conn, recorder, [event(streams[writer], v) for v in versions])
                pending[writer].extend(ids)
            elif action == "commit":
                conn.commit()
                for offset, nid in enumerate(pending[writer], start=1):
                    committed[nid] = (streams[writer], committed_version[writer] + offset)
                committed_version[writer] += len(pending[writer])
                pending[writer] = []
            elif action == "rollback":
                conn.rollback()
                pending[writer] = []
            else:
                before_read()
                follower.limit = size
                follower.poll()
        for writer, conn in enumerate(connections):
            conn.commit()
            for offset, nid in enumerate(pending[writer], start=1):
                committed[nid] = (streams[writer], committed_version[writer] + offset)
    finally:
        for conn in connections:
            conn.close()

    follower.limit = 1000
    follower.drain_until_seen(set(committed))
    # Only this example's streams: earlier examples' events may settle late too.
    mine = {str(s) for s in streams}
    follower.seen = [n for n in follower.seen if str(n.originator_id) in mine]
    seen_ids = [n.id for n in follower.seen]
    assert len(seen_ids) == len(set(seen_ids)), "a notification was seen twice"
    assert set(seen_ids) == set(committed), "a committed notification was missed"
    versions: dict[UUID, list[int]] = defaultdict(list)
    for n in follower.seen:
        assert committed[n.id] == (n.originator_id, n.originator_version)
        versions[UUID(str(n.originator_id))].append(n.originator_version)
    for stream_versions in versions.values():
        assert stream_versions == sorted(stream_versions), "per-stream order broken"


# -- real threads ------------------------------------------------------------------------


@pytest.mark.parametrize("horizon", HORIZONS)
def test_concurrent_writers_and_a_tailing_follower(
    pool: psycopg_pool.ConnectionPool, schema: str, monkeypatch: pytest.MonkeyPatch, horizon: str
) -> None:
    """Eight writers append single events and batches for a while; a follower tails the log."""
    monkeypatch.setattr(recorder_module, "HORIZON_FUNCTION", horizon)
    recorder = PostgresEventRecorder(pool, schema)
    check_concurrent_writers(recorder, recorder)


def check_concurrent_writers(
    recorder: PostgresEventRecorder,
    reader: PostgresEventRecorder,
    *,
    before_drain: Callable[[], None] = lambda: None,
) -> None:
    """Eight writers append through ``recorder`` for 2 s while a follower tails the log
    through ``reader`` (the same server, or a standby: ``before_drain`` waits for its
    replay); every stream is then seen whole, in order."""
    stop = threading.Event()
    written: dict[UUID, int] = defaultdict(int)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        mine = [uuid4() for _ in range(5)]
        versions = dict.fromkeys(mine, 0)
        try:
            while not stop.is_set():
                stream = rng.choice(mine)
                n = rng.choice([1, 1, 1, 5, 50])
                first = versions[stream] + 1
                recorder.insert_events([event(stream, v) for v in range(first, first + n)])
                versions[stream] += n
            with lock:
                for stream, v in versions.items():
                    written[stream] = v
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    follower = Follower(reader, limit=500)
    writers = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in writers:
        t.start()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        follower.poll()
    stop.set()
    for t in writers:
        t.join()
    before_drain()
    follower.drain(expect=sum(written.values()))

    assert errors == []
    per_stream: dict[UUID, list[int]] = defaultdict(list)
    for n in follower.seen:
        per_stream[UUID(str(n.originator_id))].append(n.originator_version)
    assert {s: len(v) for s, v in per_stream.items()} == {s: v for s, v in written.items() if v}
    for stream, got in per_stream.items():
        assert got == list(range(1, written[stream] + 1)), f"stream {stream} out of order"

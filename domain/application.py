"""The application service base: eventsourcing's ``Application``, for eventkit aggregates.

Adds what every command of an application service needs and eventsourcing leaves to each
service: :meth:`Application.run` runs a command's decision and saves what it returns,
again on freshly loaded aggregates when another writer appended to one of its streams
first (a bounded number of times, with jittered backoff); :meth:`Application.find` loads
an aggregate of an expected kind, through an :class:`AggregateCache` for the kinds listed in
``cached_kinds`` (long, hot streams whose full replay on every command would cost time in
proportion to their history). This module knows nothing of storage.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast
from uuid import UUID

import eventsourcing.application
from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import EventStore, IntegrityError, Notification, Recording
from eventsourcing.utils import EnvType

from eventkit.domain.model import Aggregate
from eventkit.domain.snapshots import Snapshot, SnapshotStore

logger = logging.getLogger(__name__)

_Aggregates = TypeVar("_Aggregates", bound=tuple[Aggregate, ...])
_Aggregate = TypeVar("_Aggregate", bound=Aggregate)


class AlreadyRecordedError(Exception):
    """A save's idempotency key was recorded by an earlier save: nothing was appended now,
    and ``notification_ids`` are the ids of the events the earlier save appended.

    eventkit's :meth:`Application.save` answers with the earlier save's recordings instead
    of raising it; a recorder raises it to the application.
    """

    def __init__(self, idempotency_key: str, notification_ids: Sequence[int]) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} was recorded already, with the events of "
            f"notification ids {list(notification_ids)}: nothing was appended again"
        )
        self.idempotency_key = idempotency_key
        self.notification_ids = list(notification_ids)


class _IdempotentRecorder(Protocol):
    """What an application needs of a recorder that records idempotency keys (eventkit's)."""

    def appended_with(self, idempotency_key: str) -> list[int] | None: ...

    def notifications(self, notification_ids: Sequence[int]) -> Sequence[Notification]: ...


@dataclass(frozen=True)
class Outcome(Generic[_Aggregates]):
    """What :meth:`Application.run` saved: the aggregates, their recordings, and how many
    times the command ran again after a concurrency conflict.

    ``repeated``: the command's idempotency key was recorded already (it ran before, and
    this is a retry); nothing was saved now, ``recordings`` are those of the first run
    (decoded from the log) and ``aggregates`` is empty.
    """

    aggregates: _Aggregates
    recordings: list[Recording[UUID]]
    retries: int
    repeated: bool = False

    @property
    def notification_ids(self) -> list[int]:
        """The notification ids of the events saved, in order."""
        return [r.notification.id for r in self.recordings]

    @property
    def notification_id(self) -> int:
        """The notification id of the last event saved (pass it to a query's
        ``wait_for`` to read your own writes)."""
        return self.recordings[-1].notification.id


class Application(eventsourcing.application.Application[UUID]):
    """eventsourcing's ``Application`` for eventkit aggregates, with a cheaper ``save()``.

    eventsourcing's ``save()`` sorts what it is given with two ``isinstance`` checks
    against runtime-checkable protocols, which on Python 3.11 inspect every member of the
    protocol on every call: about 40 us of a one-event save's ~250 us of client CPU here.
    A save of eventkit aggregates (the only thing eventkit's application services save)
    collects their events directly and then does exactly what eventsourcing's ``save()``
    does; anything else (domain events, other aggregates) goes through eventsourcing's.
    """

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """eventsourcing's ``save()``. With ``idempotency_key=KEY`` (eventkit's recorder
        only), the key is recorded with the events in the append's transaction; a save
        with a key recorded already appends nothing and returns the recordings of the save
        that recorded it (the events as the log holds them)."""
        try:
            return self._save(*objs, **kwargs)
        except AlreadyRecordedError as e:
            return self._recordings_of(e.notification_ids)

    def _save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        if not all(obj is None or isinstance(obj, Aggregate) for obj in objs):
            return super().save(*objs, **kwargs)
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for aggregate in objs:
            if aggregate is not None:
                processing_event.events.extend(aggregate.collect_events())
                processing_event.aggregates[aggregate.id] = aggregate
        processing_event.saved_kwargs.update(kwargs)
        # The rest of eventsourcing 9.5's Application.save(), step by step.
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # eventsourcing's deprecated hook
        return recordings

    #: How many times :meth:`run` runs a command before a concurrency conflict is re-raised.
    max_attempts: ClassVar[int] = 5
    #: Seconds: the first retry waits up to twice this, each further one up to twice as long.
    retry_delay: ClassVar[float] = 0.01
    #: Aggregates of these kinds are kept between commands (see :class:`AggregateCache`).
    cached_kinds: ClassVar[tuple[type[Aggregate], ...]] = ()
    #: How many aggregates the cache keeps, least recently used dropped first.
    cache_maxsize: ClassVar[int] = 10_000

    #: Aggregates without a ``Snapshot`` class of their own are snapshotted with eventkit's
    #: (pydantic-validated, named by the aggregate's declared type name).
    snapshot_class = Snapshot

    def __init__(self, env: EnvType | None = None) -> None:
        super().__init__(env)
        snapshots = self.snapshots if isinstance(self.snapshots, SnapshotStore) else None
        self._cache = AggregateCache(self.events, self.cache_maxsize, snapshots)

    def construct_snapshot_store(self) -> EventStore[UUID]:
        """eventsourcing's snapshot store, leaving out snapshots taken at another
        ``class_version`` of their aggregate (:class:`SnapshotStore`)."""
        return SnapshotStore(self.mapper, self.factory.aggregate_recorder(purpose="snapshots"))

    def run(
        self,
        decide: Callable[[], _Aggregates],
        command: object = None,
        *,
        idempotency_key: str | None = None,
    ) -> Outcome[_Aggregates]:
        """Run ``decide`` (which loads aggregates, calls their command methods and returns
        the aggregates to save) and save what it returns, in one transaction; when another
        writer appended to one of those streams first, run it again on freshly loaded
        aggregates, up to :attr:`max_attempts` times, then re-raise the conflict.

        ``decide`` must load what it changes itself, so that each run starts from the
        store; ``command`` names the command in logs and :meth:`after_conflict`.

        ``idempotency_key``: the command's own key (a request id, a reaction's
        ``context.idempotency_key``), recorded with its events. A command run again with a
        key recorded already (a client retrying after a timeout or a lost connection) does
        not run ``decide`` and saves nothing: its :class:`Outcome` is ``repeated``, with the
        first run's recordings. A different command (another key, or none) on the same
        version still conflicts.
        """
        if idempotency_key is not None:
            recorded = self._recorded_with(idempotency_key)
            if recorded is not None:
                return Outcome(cast(_Aggregates, ()), recorded, 0, repeated=True)
        for attempt in range(1, self.max_attempts + 1):
            aggregates = decide()
            try:
                if idempotency_key is None:
                    recordings = self.save(*aggregates)
                else:
                    recordings = self._save(*aggregates, idempotency_key=idempotency_key)
            except AlreadyRecordedError as e:  # the same command, saved meanwhile
                recordings = self._recordings_of(e.notification_ids)
                return Outcome(cast(_Aggregates, ()), recordings, attempt - 1, repeated=True)
            except IntegrityError as e:
                self.after_conflict(command, attempt, e)
                if attempt == self.max_attempts:
                    raise
                logger.debug("%s conflicted (attempt %d), retrying: %s", command, attempt, e)
                # Jitter, so writers that collided do not collide again in step.
                time.sleep(random.uniform(0, self.retry_delay * 2**attempt))
                continue
            return Outcome(aggregates, recordings, attempt - 1)
        raise AssertionError("unreachable")  # pragma: no cover

    def _recorded_with(self, idempotency_key: str) -> list[Recording[UUID]] | None:
        """The recordings of the save that recorded ``idempotency_key``, if one did."""
        ids = self._idempotent_recorder().appended_with(idempotency_key)
        return None if ids is None else self._recordings_of(ids)

    def _recordings_of(self, notification_ids: Sequence[int]) -> list[Recording[UUID]]:
        """Recordings of events already in the log, decoded from it, in the ids' order."""
        found = {n.id: n for n in self._idempotent_recorder().notifications(notification_ids)}
        return [
            Recording(self.mapper.to_domain_event(found[i]), found[i])
            for i in notification_ids
            if i in found
        ]

    def _idempotent_recorder(self) -> _IdempotentRecorder:
        recorder = self.recorder
        if not (hasattr(recorder, "appended_with") and hasattr(recorder, "notifications")):
            raise TypeError(
                f"{type(self).__name__} records with {type(recorder).__name__}, which records "
                "no idempotency keys; eventkit's recorder does (PERSISTENCE_MODULE="
                "eventkit.infrastructure.factory)"
            )
        return cast(_IdempotentRecorder, recorder)

    def after_conflict(self, command: object, attempt: int, error: IntegrityError) -> None:
        """Called after each save in :meth:`run` that conflicted, before the retry or the
        re-raise. Does nothing; override it to count or report conflicts."""

    def find(self, aggregate_id: UUID, kind: type[_Aggregate]) -> _Aggregate | None:
        """The aggregate with ``aggregate_id`` if it exists and is a ``kind``, else None;
        through the cache when ``kind`` is one of :attr:`cached_kinds`."""
        if kind in self.cached_kinds:
            aggregate = self._cache.get(aggregate_id)
        else:
            aggregate = self._cache.load(aggregate_id)
        return aggregate if isinstance(aggregate, kind) else None


class AggregateCache:
    """Aggregates kept between commands and brought up to date from their stream on each load.

    Every load reads the events recorded after the cached version, so what it returns is as
    current as an uncached load (other processes' writes included); it only saves replaying
    the older events, which matters for long, hot streams such as a popular stock item's.
    Callers get a deep copy taken under the aggregate's lock: a command's unsaved changes
    never reach the cache or another thread. eventsourcing's own repository cache copies
    after releasing its lock, while another thread may be fast-forwarding the same object,
    so it is not used here.
    """

    def __init__(
        self, events: EventStore[UUID], maxsize: int, snapshots: SnapshotStore | None = None
    ) -> None:
        self._events = events
        self._snapshots = snapshots
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._entries: OrderedDict[UUID, _CacheEntry] = OrderedDict()

    def get(self, aggregate_id: UUID) -> Aggregate | None:
        """A copy of the aggregate as recorded now, or None when its stream is empty."""
        with self._lock:
            entry = self._entries.get(aggregate_id)
            if entry is None:
                entry = self._entries[aggregate_id] = _CacheEntry()
                if len(self._entries) > self._maxsize:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(aggregate_id)
        with entry.lock:
            try:
                entry.aggregate = self.load(aggregate_id, entry.aggregate)
            except BaseException:
                entry.aggregate = None  # perhaps half brought up to date: start again
                raise
            return copy.deepcopy(entry.aggregate)

    def load(self, aggregate_id: UUID, cached: Aggregate | None = None) -> Aggregate | None:
        """``cached`` (None: the latest current snapshot, if any) brought up to date from
        the events recorded after its version; not kept in the cache."""
        if cached is None and self._snapshots is not None:
            snapshot = self._snapshots.latest(aggregate_id)
            if snapshot is not None:
                cached = snapshot.mutate(None)
        gt = None if cached is None else cached.version
        return _project(cached, self._events.get(aggregate_id, gt=gt))


@dataclass
class _CacheEntry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    aggregate: Aggregate | None = None


def _project(
    aggregate: Aggregate | None, events: Iterable[DomainEventProtocol[UUID]]
) -> Aggregate | None:
    """Apply ``events`` to ``aggregate`` (None before the first) and return the result.

    eventsourcing's ``project_aggregate`` asserts each event against a runtime-checkable
    protocol, which Python 3.11 evaluates slowly (it collects the protocol's attributes on
    every check); the shop's events are all ``Aggregate.Event``, so the check is not needed.
    """
    for event in events:
        aggregate = cast(Aggregate.Event, event).mutate(aggregate)
    return aggregate

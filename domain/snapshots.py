"""Snapshots of aggregates: an aggregate's state at a version, so loading it need not replay
its whole stream.

eventsourcing's snapshotting settings work unchanged (``snapshotting_intervals = {Cls: N}``
on the application class, ``IS_SNAPSHOTTING_ENABLED``, ``app.take_snapshot(id)``); what
eventkit changes is the snapshot itself:

- its state is validated with pydantic, like an event, against the aggregate's declared
  state: the attributes annotated in the aggregate's class body (``on_hand: int``,
  ``price: Money``, ``reservations: dict[UUID, int]``). ``Decimal``, aware datetimes, UUIDs,
  enums and nested models come back equal; an attribute that is not annotated is refused
  when the snapshot is taken, naming it;
- its ``topic`` field holds the aggregate's declared type name (:mod:`eventkit.domain.names`),
  which only ever resolves to a declared class: a stored snapshot never names a module to
  import;
- a snapshot whose aggregate ``class_version`` differs from the aggregate class's current one
  is ignored (:class:`SnapshotStore`): the aggregate is rebuilt from its events, which are
  upcast one by one, and the next snapshot is taken at the current version. Snapshots are
  never upcast: their state is derived data, and the events can always rebuild it.
"""

from __future__ import annotations

import functools
import logging
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Self, cast
from uuid import UUID

import pydantic
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import EventStore
from pydantic import ConfigDict, TypeAdapter
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from eventkit.domain.model import Aggregate, DomainEvent
from eventkit.domain.names import AGGREGATE_TYPES, EVENT_TYPES
from eventkit.domain.personal import ERASED

logger = logging.getLogger(__name__)

_CLASS_VERSION = "class_version"
#: eventsourcing's attributes that a snapshot's own fields carry, or that it must not keep.
_NOT_STATE = ("_id", "_version", "_pending_events")
#: eventsourcing's attributes of every aggregate that belong to its state.
_BASE_STATE: dict[str, Any] = {"_created_on": datetime, "_modified_on": datetime}


class SnapshotError(ValueError):
    """An aggregate's state cannot be snapshotted, or a stored snapshot cannot be loaded."""


class Snapshot(DomainEvent, type_name="eventkit.Snapshot"):
    """The state of one aggregate at one version of its stream.

    ``topic`` is the aggregate's declared type name; ``state`` its attributes in JSON form
    (what pydantic's JSON mode makes of them), with ``class_version`` when the aggregate
    class declares one above 1.
    """

    topic: str
    state: dict[str, Any]

    @classmethod
    def take(cls, aggregate: Any) -> Self:
        """A snapshot of ``aggregate`` as it is now (eventsourcing's ``take_snapshot``
        calls this with the aggregate as recorded at the version it snapshots)."""
        aggregate_class = type(aggregate)
        if not isinstance(aggregate, Aggregate):
            raise SnapshotError(
                f"{aggregate_class.__qualname__} is not an eventkit Aggregate; eventkit "
                "snapshots aggregates of eventkit.domain.model.Aggregate"
            )
        adapter = state_adapter(cast(type[Aggregate], aggregate_class))
        _check_personal(cast(type[Aggregate], aggregate_class))
        state = {k: v for k, v in vars(aggregate).items() if k not in _NOT_STATE}
        where = f"{AGGREGATE_TYPES.declared_name(aggregate_class)} {aggregate.id} version "
        where += str(aggregate.version)
        try:
            dumped: dict[str, Any] = adapter.dump_python(
                adapter.validate_python(state), mode="json"
            )
        except pydantic.ValidationError as e:
            raise SnapshotError(f"cannot snapshot {where}: {_explain(e)}") from e
        version = class_version(aggregate_class)
        if version > 1:
            dumped[_CLASS_VERSION] = version
        return cls(
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=datetime.now(UTC),
            topic=AGGREGATE_TYPES.name(aggregate_class),
            state=dumped,
        )

    @property
    def aggregate_class(self) -> type[Aggregate]:
        """The declared aggregate class ``topic`` names (never a module the log names)."""
        try:
            found = AGGREGATE_TYPES.resolve(self.topic)
        except LookupError as e:
            raise SnapshotError(f"cannot load snapshot of {self._where()}: {e}") from None
        return cast(type[Aggregate], found)

    @property
    def aggregate_class_version(self) -> int:
        """The ``class_version`` of the aggregate class that took this snapshot."""
        version = self.state.get(_CLASS_VERSION, 1)
        return version if isinstance(version, int) else 1

    def is_current(self) -> bool:
        """Whether the aggregate class is still at the ``class_version`` of the snapshot."""
        return self.aggregate_class_version == class_version(self.aggregate_class)

    def mutate(self, aggregate: None) -> Aggregate:
        """The aggregate this snapshot holds, validated against its declared state."""
        cls = self.aggregate_class
        if not self.is_current():
            raise SnapshotError(
                f"snapshot of {self._where()} was taken at class_version "
                f"{self.aggregate_class_version}, but {cls.__qualname__} is at class_version "
                f"{class_version(cls)}; load it through eventkit's SnapshotStore, which "
                "ignores such snapshots"
            )
        state = {k: v for k, v in self.state.items() if k != _CLASS_VERSION}
        try:
            values = state_adapter(cls).validate_python(state)
        except pydantic.ValidationError as e:
            raise SnapshotError(
                f"cannot load snapshot of {self._where()}: {_explain(e)} (raise "
                f"{cls.__qualname__}.class_version when its state changes shape, so that "
                "older snapshots are ignored)"
            ) from e
        values = dict(values)
        values["_id"] = self.originator_id
        values["_version"] = self.originator_version
        values["_pending_events"] = []
        instance = object.__new__(cls)
        object.__setattr__(instance, "__dict__", values)
        return instance

    def _where(self) -> str:
        return f"{self.topic} {self.originator_id} version {self.originator_version}"


def class_version(cls: type[Any]) -> int:
    """An aggregate class's ``class_version`` (1 when it declares none)."""
    version = getattr(cls, _CLASS_VERSION, 1)
    return version if isinstance(version, int) else 1


@functools.cache
def state_adapter(cls: type[Aggregate]) -> TypeAdapter[dict[str, Any]]:
    """The pydantic adapter of ``cls``'s state: its annotated attributes, and eventsourcing's
    creation and modification times; any other attribute is refused.

    Built on first use, once per class, rather than when the class is defined: the
    annotations may name classes defined later in the aggregate's module.
    """
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except (NameError, TypeError) as e:
        raise SnapshotError(
            f"cannot snapshot {cls.__qualname__}: its annotations do not resolve: {e}"
        ) from e
    declared: set[str] = set()
    for klass in cls.__mro__:
        if isinstance(klass, type) and issubclass(klass, Aggregate) and klass is not Aggregate:
            declared.update(vars(klass).get("__annotations__", {}))
    fields = dict(_BASE_STATE)
    for name in declared:
        hint = hints.get(name)
        if hint is None or typing.get_origin(hint) is ClassVar:
            continue
        fields[name] = hint
    # A TypedDict made at run time: its keys include eventsourcing's private attributes,
    # which a pydantic model could not have as fields.
    make_typed_dict: Any = TypedDict
    state: Any = make_typed_dict(f"{cls.__qualname__}State", fields, total=False)
    state.__pydantic_config__ = ConfigDict(extra="forbid")
    adapter: TypeAdapter[dict[str, Any]] = TypeAdapter(state)
    return adapter


@functools.cache
def _check_personal(cls: type[Aggregate]) -> None:
    """Refuse to snapshot an aggregate that would store personal data in clear: its events
    hold some (``personal_data``) and it declares none of its own, or a personal attribute
    could not read as ``ERASED`` once its subject is forgotten."""
    personal = cls.personal_data
    if personal is None:
        events = [
            e.__qualname__
            for e in EVENT_TYPES.subclasses(cls.Event)
            if getattr(e, "personal_data", None) is not None
        ]
        if events:
            raise SnapshotError(
                f"cannot snapshot {cls.__qualname__}: its events {', '.join(events)} hold "
                "personal data, so its state may too; declare which attributes on the "
                "aggregate (personal_data = PersonalData(subject=..., fields=(...)))"
            )
        return
    hints = typing.get_type_hints(cls)
    for name in (personal.subject, *personal.fields):
        if name not in hints:
            raise SnapshotError(
                f"cannot snapshot {cls.__qualname__}: personal_data names {name!r}, which "
                "its class body does not annotate"
            )
    for name in personal.fields:
        try:
            TypeAdapter(hints[name]).validate_python(ERASED)
        except pydantic.ValidationError:
            raise SnapshotError(
                f"cannot snapshot {cls.__qualname__}: personal attribute {name!r} "
                f"({hints[name]}) cannot hold {ERASED!r}, what it reads as once its subject "
                "is forgotten; type it str (or str | None)"
            ) from None


def _explain(error: pydantic.ValidationError) -> str:
    """A validation error in one line; attributes refused as extra named as unannotated."""
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(
                f"attribute {where!r} is not declared (annotate it in the aggregate's class "
                f"body, e.g. {where}: int)"
            )
        else:
            parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


class SnapshotStore(EventStore[UUID]):
    """The store of snapshots: eventsourcing's ``EventStore``, less the snapshots taken at
    another ``class_version`` of their aggregate than the current one, which it leaves out
    (eventsourcing's repository then replays the stream from its start)."""

    def get(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Iterator[DomainEventProtocol[UUID]]:
        for snapshot in super().get(originator_id, gt=gt, lte=lte, desc=desc, limit=limit):
            if isinstance(snapshot, Snapshot) and not snapshot.is_current():
                logger.debug(
                    "snapshot of %s %s version %s ignored: taken at class_version %s",
                    snapshot.topic,
                    snapshot.originator_id,
                    snapshot.originator_version,
                    snapshot.aggregate_class_version,
                )
                continue
            yield snapshot

    def latest(self, originator_id: UUID) -> Snapshot | None:
        """The latest current snapshot of ``originator_id``, if there is one."""
        for snapshot in self.get(originator_id, desc=True, limit=1):
            return cast(Snapshot, snapshot)
        return None

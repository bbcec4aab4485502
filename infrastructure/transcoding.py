"""Turn pydantic domain events into stored events and back, exactly.

eventsourcing 9.5's default mapper neither validates on decode nor encodes nested pydantic
models, so eventkit brings its own. A stored event's state is the event's fields as UTF-8
JSON (pydantic's JSON mode: ``Decimal`` as a string, so ``"1.10"`` stays ``1.10``; ``UUID`` as
a string; aware ``datetime`` in ISO 8601 with its offset; enums by value; nested models as
objects), without ``originator_id`` and ``originator_version``, which have columns of their
own. The ``topic`` column holds the event class's stable type name, and a created event's
``originator_topic`` its aggregate's (:mod:`eventkit.domain.names`); a stored name resolves
only to a declared class, so nothing the log says is ever imported. Decoding runs
eventsourcing's upcasting (``class_version`` and ``upcast_vN_vN+1``) on
the JSON object, then validates it with the event's model, so a bad payload fails loudly,
with the stream, version and topic in the message.
"""

from __future__ import annotations

import functools
from typing import Any, cast
from uuid import UUID

import pydantic_core
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Cipher, Compressor, Mapper, StoredEvent, Transcoder
from pydantic import BaseModel, ValidationError

from eventkit.domain.names import (
    AGGREGATE_TYPES,
    EVENT_TYPES,
    TypeNameError,
    UnknownTypeNameError,
)
from eventkit.domain.personal import ERASED, PersonalData, placeholders
from eventkit.domain.snapshots import Snapshot
from eventkit.infrastructure.errors import (
    ConfigurationError,
    EventDecodingError,
    EventEncodingError,
)
from eventkit.infrastructure.subjects import (
    MARKER,
    SUBJECT,
    MemorySubjectKeys,
    SubjectKeys,
    is_sealed,
    seal,
    unseal,
)

_ORIGINATOR_FIELDS: set[str] = {"originator_id", "originator_version"}
_CLASS_VERSION = "class_version"
_ORIGINATOR_TOPIC = "originator_topic"


class PydanticJSONTranscoder(Transcoder):
    """JSON objects to UTF-8 bytes and back, with pydantic-core (fast, and strict JSON)."""

    def encode(self, obj: Any) -> bytes:
        return pydantic_core.to_json(obj)

    def decode(self, data: bytes) -> Any:
        return pydantic_core.from_json(data)


class PydanticMapper(Mapper[UUID]):
    """Maps pydantic domain events to :class:`StoredEvent` objects and back."""

    def __init__(
        self,
        transcoder: Transcoder | None = None,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
        *,
        subject_keys: SubjectKeys | None = None,
    ) -> None:
        """``subject_keys``: where data subjects' keys are kept, for events with personal
        data (:mod:`eventkit.domain.personal`); without it such events are refused."""
        if compressor is not None or cipher is not None:
            raise ConfigurationError(
                "eventkit stores payloads as JSON that operators can read in SQL, with "
                "personal fields encrypted per data subject (eventkit.domain.personal); unset "
                "COMPRESSOR_TOPIC, CIPHER_TOPIC and CIPHER_KEY"
            )
        super().__init__(transcoder or PydanticJSONTranscoder())
        self.subject_keys = subject_keys

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        cls = type(domain_event)
        try:
            topic = EVENT_TYPES.name(cls)
        except TypeNameError as e:
            reason = (
                str(e)
                if isinstance(domain_event, BaseModel)
                else "not a pydantic model declared as an event; eventkit's events derive "
                "from eventkit.domain.model.DomainEvent"
            )
            raise EventEncodingError(
                f"cannot encode {cls.__module__}:{cls.__qualname__}: {reason}"
            ) from None
        try:
            state = cast(BaseModel, domain_event).model_dump(
                mode="json", exclude=_ORIGINATOR_FIELDS
            )
        except pydantic_core.PydanticSerializationError as e:
            raise EventEncodingError(
                f"cannot encode {topic} for stream {domain_event.originator_id} version "
                f"{domain_event.originator_version}: {e}"
            ) from e
        aggregate_topic = state.get(_ORIGINATOR_TOPIC)
        if isinstance(aggregate_topic, str):
            # eventsourcing sets the aggregate's module path; the log keeps its stable name.
            try:
                state[_ORIGINATOR_TOPIC] = AGGREGATE_TYPES.name(
                    AGGREGATE_TYPES.resolve(aggregate_topic)
                )
            except (TypeNameError, UnknownTypeNameError) as e:
                raise EventEncodingError(
                    f"cannot encode {topic} for stream {domain_event.originator_id}: {e}"
                ) from None
        class_version = _class_version(cls)
        if class_version > 1:
            state[_CLASS_VERSION] = class_version
        personal = placeholders(cast(type[BaseModel], cls))
        if personal:
            self._seal(state, cls, personal, domain_event)
        elif isinstance(domain_event, Snapshot):
            self._seal_snapshot(state, domain_event)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=topic,
            state=self.transcoder.encode(state),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        """The domain event ``stored_event`` holds. Raises :class:`EventDecodingError`
        naming its stream, version and topic whatever goes wrong (an upcaster's or a
        validator's own exception too): a stored event that cannot be decoded is that
        event's failure, never a crash of the reader."""
        try:
            return self._to_domain_event(stored_event)
        except (EventDecodingError, ConfigurationError):
            raise
        except Exception as e:
            raise EventDecodingError(
                f"cannot decode {_Where(stored_event)}: {type(e).__name__}: {e}"
            ) from e

    def _to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        where = _Where(stored_event)  # formatted only when an error names it
        try:
            cls = EVENT_TYPES.resolve(stored_event.topic)
        except UnknownTypeNameError as e:
            raise EventDecodingError(f"cannot decode {where}: unknown event type: {e}") from None
        try:
            state = self.transcoder.decode(stored_event.state)
        except ValueError as e:
            raise EventDecodingError(f"cannot decode {where}: payload is not JSON: {e}") from e
        if not isinstance(state, dict):
            raise EventDecodingError(
                f"cannot decode {where}: payload is {type(state).__name__}, not a JSON object"
            )
        if MARKER in stored_event.state:
            self._unseal(state, placeholders(cls), where)
            inner = state.get("state")
            if issubclass(cls, Snapshot) and isinstance(inner, dict):
                self._unseal(inner, _snapshot_placeholders(state.get("topic")), where)
        _upcast(cls, state, where)
        aggregate_topic = state.get(_ORIGINATOR_TOPIC)
        if isinstance(aggregate_topic, str):
            # eventsourcing's created event constructs its aggregate from a module path
            # (resolve_topic): give it the declared class's, never one the log names.
            try:
                aggregate = AGGREGATE_TYPES.resolve(aggregate_topic)
            except UnknownTypeNameError as e:
                raise EventDecodingError(f"cannot decode {where}: {e}") from None
            state[_ORIGINATOR_TOPIC] = f"{aggregate.__module__}:{aggregate.__qualname__}"
        state["originator_id"] = stored_event.originator_id
        state["originator_version"] = stored_event.originator_version
        try:
            event = cls.model_validate(state)
        except ValidationError as e:
            raise EventDecodingError(f"cannot decode {where}: {e}") from e
        return cast("DomainEventProtocol[UUID]", event)

    def _keys(self, what: str) -> SubjectKeys:
        if self.subject_keys is None:
            raise ConfigurationError(
                f"{what} holds personal data, encrypted per data subject, and this mapper has "
                "no subject keys: construct it with subject_keys= (eventkit's factory, "
                "runner and commands do)"
            )
        return self.subject_keys

    def _seal(
        self,
        state: dict[str, Any],
        cls: type[Any],
        personal: dict[str, Any],
        domain_event: DomainEventProtocol[UUID],
    ) -> None:
        """Encrypt the personal fields of ``state`` (an event's, or a snapshot's aggregate
        state) under their subject's key, in place."""
        declared: PersonalData = cls.personal_data
        what = (
            f"{cls.__qualname__} of stream {domain_event.originator_id} version "
            f"{domain_event.originator_version}"
        )
        subject = state.get(declared.subject)
        if subject is None:
            if all(state.get(f) is None for f in personal):
                return
            raise EventEncodingError(
                f"cannot encode {what}: its subject field {declared.subject!r} is None but "
                "personal fields have values; whose data are they?"
            )
        subject = str(subject)
        key = self._keys(what).key(subject, create=True)
        if key is None:  # pragma: no cover - create=True always makes one
            raise EventEncodingError(f"cannot encode {what}: no key for subject {subject!r}")
        for name in personal:
            if name in state:
                state[name] = seal(key, subject, pydantic_core.to_json(state[name]))

    def _seal_snapshot(self, state: dict[str, Any], snapshot: Snapshot) -> None:
        aggregate = snapshot.aggregate_class
        personal = _snapshot_placeholders(snapshot.topic)
        inner = state.get("state")
        if personal and isinstance(inner, dict):
            self._seal(inner, aggregate, personal, snapshot)

    def _unseal(self, state: dict[str, Any], personal: dict[str, Any], where: _Where) -> None:
        """Decrypt the sealed values of ``state`` in place; a value whose subject has been
        forgotten reads as its field's placeholder."""
        for name, value in state.items():
            if not is_sealed(value):
                continue
            key = self._keys(f"stored {where}").key(value[SUBJECT], create=False)
            if key is None:
                state[name] = personal.get(name, ERASED)
                continue
            plaintext = unseal(key, value, f"field {name!r} of {where}")
            state[name] = self.transcoder.decode(plaintext)


@functools.cache
def _snapshot_placeholders(aggregate_topic: object) -> dict[str, Any]:
    """The personal attributes of the aggregate a snapshot names, with their placeholders
    (read from the annotated state; ``ERASED`` when one is not annotated)."""
    if not isinstance(aggregate_topic, str):
        return {}
    try:
        aggregate = AGGREGATE_TYPES.resolve(aggregate_topic)
    except LookupError:
        return {}
    declared: PersonalData | None = getattr(aggregate, "personal_data", None)
    if declared is None:
        return {}
    return dict.fromkeys(declared.fields, ERASED)


class MemoryKeysPydanticMapper(PydanticMapper):
    """:class:`PydanticMapper` with data subjects' keys in its own memory, for in-memory
    applications (``MAPPER_TOPIC`` with eventsourcing's POPO recorder) and tests."""

    def __init__(
        self,
        transcoder: Transcoder | None = None,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
    ) -> None:
        super().__init__(transcoder, compressor, cipher, subject_keys=MemorySubjectKeys())


class _Where:
    """Names a stored event in error messages: stream, version and topic."""

    __slots__ = ("_event",)

    def __init__(self, stored_event: StoredEvent) -> None:
        self._event = stored_event

    def __str__(self) -> str:
        e = self._event
        return f"stream {e.originator_id} version {e.originator_version} (topic {e.topic})"


@functools.cache
def _class_version(cls: type[BaseModel]) -> int:
    # Looked up once per class: a missing attribute on a pydantic model class is slow.
    version: int = getattr(cls, _CLASS_VERSION, 1)
    return version


def _upcast(cls: type[BaseModel], state: dict[str, Any], where: _Where) -> None:
    """Bring a stored payload up to the event class's current ``class_version``, in place."""
    stored_version = state.pop(_CLASS_VERSION, 1)
    if type(stored_version) is not int or stored_version < 1:
        raise EventDecodingError(
            f"cannot decode {where}: class_version is {stored_version!r}, not a whole "
            "number from 1 up"
        )
    current_version = _class_version(cls)
    if stored_version > current_version:
        raise EventDecodingError(
            f"cannot decode {where}: stored with class_version {stored_version}, but "
            f"{cls.__qualname__} is at class_version {current_version} (older code?)"
        )
    while stored_version < current_version:
        name = f"upcast_v{stored_version}_v{stored_version + 1}"
        upcast = getattr(cls, name, None)
        if upcast is None:
            raise EventDecodingError(
                f"cannot decode {where}: {cls.__qualname__} has class_version "
                f"{current_version} but no {name}()"
            )
        try:
            upcast(state)
        except Exception as e:
            raise EventDecodingError(
                f"cannot decode {where}: {cls.__qualname__}.{name}() failed: "
                f"{type(e).__name__}: {e}"
            ) from e
        stored_version += 1

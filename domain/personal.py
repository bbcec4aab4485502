"""Personal data in events, declared for crypto-shredding.

An event class (or an aggregate class, for its snapshots) says which of its fields hold a
person's data and which field names that person, the *data subject*::

    class Registered(Aggregate.Created):
        personal_data = PersonalData(subject="customer_id", fields=("name", "email"))

        customer_id: UUID
        name: str
        email: str | None

eventkit's mapper encrypts those fields with a key of the subject's own before they are
stored, and decrypts them when they are read. Forgetting the subject deletes the key: from
then on every stored copy of those fields (events, snapshots, and whatever a rebuild reads)
is unreadable, and reads as its placeholder while the rest of the event loads as before.

The placeholder of a field is :data:`ERASED` (the string ``"<erased>"``) when the field
accepts it, else its default, else None; a field that accepts none of them is refused
when the class is defined. The subject field is stored in clear, so it must not be personal
itself: use an id (a customer's UUID), not a name or an email address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticUndefined

#: What a personal field reads as once its subject is forgotten (when the field takes a str).
ERASED = "<erased>"


class PersonalDataError(TypeError):
    """A class declares its personal data wrongly."""


@dataclass(frozen=True)
class PersonalData:
    """Which fields of an event (or attributes of an aggregate) are personal, and which one
    names their data subject."""

    subject: str
    fields: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or not self.subject:
            raise PersonalDataError(f"PersonalData: subject must be a field name, not {self!r}")
        if isinstance(self.fields, str) or not self.fields:
            raise PersonalDataError(
                f"PersonalData: fields must be a non-empty tuple of field names, not "
                f"{self.fields!r}"
            )
        if self.subject in self.fields:
            raise PersonalDataError(
                f"PersonalData: the subject field {self.subject!r} is stored in clear; it "
                "cannot be one of the encrypted fields"
            )
        object.__setattr__(self, "fields", tuple(self.fields))


def placeholders(cls: type[BaseModel]) -> dict[str, Any]:
    """Each personal field of the model ``cls`` (declared in its ``personal_data``) and the
    value it reads as once forgotten; empty when it declares none. Computed once per class.

    Raises :class:`PersonalDataError` naming the class and field when a field is missing or
    accepts neither :data:`ERASED`, nor a default, nor None.
    """
    found = _placeholders.get(cls)
    if found is None:
        personal = getattr(cls, "personal_data", None)
        found = _placeholders[cls] = {} if personal is None else _find(cls, personal)
    return found


_placeholders: dict[type[BaseModel], dict[str, Any]] = {}


def _find(cls: type[BaseModel], personal: PersonalData) -> dict[str, Any]:
    where = f"{cls.__module__}:{cls.__qualname__}"
    fields = cls.model_fields
    if personal.subject not in fields:
        raise PersonalDataError(
            f"{where}: personal_data names subject field {personal.subject!r}, which the "
            f"class does not have (fields: {', '.join(fields)})"
        )
    found: dict[str, Any] = {}
    for name in personal.fields:
        info = fields.get(name)
        if info is None:
            raise PersonalDataError(
                f"{where}: personal_data names field {name!r}, which the class does not have"
            )
        adapter: TypeAdapter[Any] = TypeAdapter(Any if info.annotation is None else info.annotation)
        for candidate in (ERASED, info.default, None):
            if candidate is PydanticUndefined:
                continue
            try:
                adapter.validate_python(candidate)
            except pydantic.ValidationError:
                continue
            found[name] = candidate
            break
        else:
            raise PersonalDataError(
                f"{where}: personal field {name!r} ({info.annotation}) accepts neither "
                f"{ERASED!r} nor None and has no default, so it could not be read once its "
                "subject is forgotten; give it a type that accepts a str or None, or a default"
            )
    return found

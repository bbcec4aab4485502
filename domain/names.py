"""Stable type names: what the log stores for an event's or an aggregate's type.

Every eventkit event class and aggregate class is *declared* under a name when Python
defines it: by default its qualified name inside its module (``Order.Placed``, ``Order``),
or the name the class gives itself::

    class Placed(Order.Event, type_name="OrderPlaced", aliases=("Order.Placed",)):
        ...

The name is what the log's ``topic`` column holds (and, for aggregates, what a created
event's ``originator_topic`` holds), so moving a class to another module changes nothing
that is stored. Reading goes the other way and only ever through these registries: a stored
name resolves to a declared class or to nothing. The log never chooses a module to import
(eventsourcing's ``resolve_topic`` would import whatever module a stored topic names).

Older stored rows name their type by module path (``domain.orders:Order.Placed``, what
eventsourcing's ``get_topic`` writes and what eventkit wrote before stable names). Those
still resolve: every declared class also answers to ``module:qualname`` of where it is
defined, and :func:`moved_module` says where a module's classes went when it was renamed.

An event class nested in an aggregate takes the aggregate's name as its prefix unless it
names itself: declaring ``class Order(Aggregate, type_name="shop.Order")`` names its
``Placed`` event ``shop.Order.Placed``.

A name in the log must mean one type: when two classes of different modules answer to one
name, encoding or decoding an event under it raises :class:`TypeNameError`, naming both
(give one of them ``type_name=``). A class defined again under the same module and
qualified name (a module reloaded, or eventsourcing redefining an aggregate's event class
so that it derives from the aggregate's own ``Event``) takes the name over.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any


class TypeNameError(TypeError):
    """Two classes were declared under one type name, or a name is not a usable one."""


class UnknownTypeNameError(LookupError):
    """A stored type name that no declared class answers to."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(
            f"no {kind} type is declared under the name {name!r} (is the module that "
            "defines it imported by the application?)"
        )
        self.kind = kind
        self.name = name


_lock = threading.RLock()
#: Renamed modules: old module path -> the module its classes are defined in now.
_moved: dict[str, str] = {}
#: Counts the changes to what names resolve to (a declaration, a moved module): a module
#: path resolved under an older count is looked up again. (A list: changed in place.)
_generation = [0]


def _changed() -> None:
    """Called under ``_lock`` whenever a declaration or a moved module changes what a stored
    name may resolve to."""
    _generation[0] += 1


def moved_module(old: str, new: str) -> None:
    """Say that the classes of module ``old`` are now defined in module ``new``.

    Stored rows whose type is the module path ``old:Qualified.Name`` (written before stable
    type names) then resolve to ``new``'s class of that qualified name, if it is declared.
    Call it in the new module: ``moved_module("domain.orders", __name__)``.
    """
    with _lock:
        _moved[old] = new
        _changed()


def _module_path(cls: type[Any]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class TypeNames:
    """One registry of declared names: of event classes, or of aggregate classes."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        #: name or alias -> the classes answering to it (one per module and qualname).
        self._classes: dict[str, list[type[Any]]] = {}
        self._names: dict[type[Any], str] = {}
        self._aliases: dict[type[Any], tuple[str, ...]] = {}
        self._explicit: set[type[Any]] = set()
        #: module path -> (the generation it was resolved under, its class): a created
        #: event's ``originator_topic`` is the aggregate's module path (eventsourcing sets
        #: it), resolved on every save that creates an aggregate, and resolving one scans
        #: every declared class.
        self._by_path: dict[str, tuple[int, type[Any]]] = {}

    def declare(self, cls: type[Any], name: str | None = None, aliases: Iterable[str] = ()) -> str:
        """Declare ``cls`` under ``name`` (default: its qualified name) and ``aliases``.

        Two classes of different places under one name are not refused here (a test suite
        may define two ``Account`` aggregates that never meet): the name is *ambiguous*,
        and encoding or decoding an event under it raises, naming both.
        """
        explicit = name is not None
        name = cls.__qualname__ if name is None else name
        aliases = tuple(aliases)
        for candidate in (name, *aliases):
            if not isinstance(candidate, str) or not candidate.strip():
                raise TypeNameError(
                    f"{_module_path(cls)}: a type name must be a non-empty string, got "
                    f"{candidate!r}"
                )
        with _lock:
            _changed()
            self._withdraw(cls)
            for candidate in (name, *aliases):
                classes = self._classes.setdefault(candidate, [])
                # A class defined again at the same place takes over from the older one.
                classes[:] = [c for c in classes if not _same_place(c, cls)] + [cls]
            self._names[cls] = name
            self._aliases[cls] = aliases
            if explicit:
                self._explicit.add(cls)
        return name

    def declare_default(self, cls: type[Any], name: str) -> None:
        """Give ``cls`` the default name ``name`` unless it declared a name itself (an
        aggregate's events take the aggregate's name as their prefix)."""
        with _lock:
            if cls not in self._explicit and self._names.get(cls) != name:
                self.declare(cls, name, self._aliases.get(cls, ()))
                self._explicit.discard(cls)

    def is_explicit(self, cls: type[Any]) -> bool:
        """Whether ``cls`` declared its name itself."""
        return cls in self._explicit

    def _withdraw(self, cls: type[Any]) -> None:
        for candidate in (self._names.get(cls), *self._aliases.get(cls, ())):
            if candidate is not None and cls in self._classes.get(candidate, ()):
                self._classes[candidate].remove(cls)

    def name(self, cls: type[Any]) -> str:
        """The name ``cls`` was declared under; raises TypeNameError when it is not
        declared, or when another class answers to the same name."""
        name = self.declared_name(cls)
        self._one(name, self._classes.get(name, [cls]))
        return name

    def declared_name(self, cls: type[Any]) -> str:
        """The name ``cls`` was declared under, whether or not another class shares it."""
        try:
            return self._names[cls]
        except KeyError:
            raise TypeNameError(
                f"{_module_path(cls)} is not a declared {self.kind} type: derive it from "
                f"eventkit's {'Aggregate' if self.kind == 'aggregate' else 'DomainEvent'}"
            ) from None

    def _one(self, name: str, classes: list[type[Any]]) -> type[Any]:
        if len(classes) > 1:
            places = " and ".join(_module_path(c) for c in classes)
            raise TypeNameError(
                f"{self.kind} type name {name!r} is declared by both {places}: a name in "
                f"the log must mean one type. Give one of them a name of its own "
                f'(class {classes[-1].__name__}(..., type_name="...")).'
            )
        return classes[0]

    def resolve(self, stored: str) -> type[Any]:
        """The declared class a stored name stands for: its name, an alias, or the module
        path it was stored under before stable names. Raises UnknownTypeNameError, or
        TypeNameError when two classes answer to the name."""
        classes = self._classes.get(stored)
        if classes:
            return self._one(stored, classes)
        found = self._by_path.get(stored)
        if found is not None and found[0] == _generation[0]:
            return found[1]
        module, colon, qualname = stored.partition(":")
        if colon:
            with _lock:
                module = _moved.get(module, module)
                for candidate in self.declared():
                    if candidate.__qualname__ == qualname and candidate.__module__ == module:
                        self._by_path[stored] = (_generation[0], candidate)
                        return candidate
        raise UnknownTypeNameError(self.kind, stored)

    def stored_names(self, cls: type[Any]) -> list[str]:
        """Every name a stored row of ``cls`` may carry: its name, its aliases, its module
        path and the module paths of the modules it moved from."""
        with _lock:
            old_paths = [
                f"{old}:{cls.__qualname__}" for old, new in _moved.items() if new == cls.__module__
            ]
        names = [
            self.declared_name(cls),
            *self._aliases.get(cls, ()),
            _module_path(cls),
            *old_paths,
        ]
        return list(dict.fromkeys(names))

    def declared(self) -> list[type[Any]]:
        """Every declared class (of a class defined again, the latest)."""
        with _lock:
            return list(
                dict.fromkeys(c for name in self._names.values() for c in self._classes[name])
            )

    def subclasses(self, base: type[Any]) -> list[type[Any]]:
        """The declared classes that are ``base`` or derive from it."""
        return [cls for cls in self.declared() if issubclass(cls, base)]


def _same_place(a: type[Any], b: type[Any]) -> bool:
    """Defined at the same module and qualified name: one class defined again."""
    return a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__


#: Every declared event class.
EVENT_TYPES = TypeNames("event")
#: Every declared aggregate class.
AGGREGATE_TYPES = TypeNames("aggregate")

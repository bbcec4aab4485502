"""eventkit: event sourcing on PostgreSQL for Python, with projection and reaction workers.

Everything an application needs is importable from here::

    from eventkit import Aggregate, Application, App, Projection, Reaction, handles, event

Names are imported on first use (PEP 562), so ``import eventkit`` (and the ``eventkit``
command's ``--help``) costs nothing until a name is used.

The package is made of the repository's folders (docs/architecture.md, "Import names"):
``eventkit.domain`` (aggregates, events, application services: no storage),
``eventkit.infrastructure`` (the event store, settings, leases, brokers, metrics),
``eventkit.projections`` (the projection and reaction runtime, queries, the declaration
of an application), and this package itself (the workers' runner, the ``eventkit``
command in ``eventkit.cli``, the test harness in ``eventkit.testing``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Each public name and the module that defines it.
_EXPORTS: dict[str, str] = {
    # domain modelling
    "Aggregate": "eventkit.domain.model",
    "DomainEvent": "eventkit.domain.model",
    "Immutable": "eventkit.domain.model",
    "event": "eventsourcing.domain",
    "Application": "eventkit.domain.application",
    "Outcome": "eventkit.domain.application",
    "moved_module": "eventkit.domain.names",
    "TypeNameError": "eventkit.domain.names",
    "metadata": "eventkit.domain.metadata",
    "current_metadata": "eventkit.domain.metadata",
    "Metadata": "eventkit.domain.metadata",
    "SnapshotError": "eventkit.domain.snapshots",
    "AlreadyRecordedError": "eventkit.domain.application",
    "PersonalData": "eventkit.domain.personal",
    "ERASED": "eventkit.domain.personal",
    # reading the log: projections, reactions, queries
    "App": "eventkit.projections.app",
    "Runtime": "eventkit.projections.app",
    "Projection": "eventkit.projections.projection",
    "Context": "eventkit.projections.projection",
    "Table": "eventkit.projections.projection",
    "handles": "eventkit.projections.projection",
    "UnhandledEventError": "eventkit.projections.projection",
    "Reaction": "eventkit.projections.reaction",
    "ReactionContext": "eventkit.projections.reaction",
    "Queries": "eventkit.projections.queries",
    "ReadModelTimeoutError": "eventkit.projections.queries",
    "Position": "eventkit.infrastructure.log",
    # running and configuring
    "Workers": "eventkit.runner",
    "WorkerOptions": "eventkit.runner",
    "load_app": "eventkit.loading",
    "Settings": "eventkit.infrastructure.settings",
    "application_env": "eventkit.infrastructure.factory",
    # errors
    "EventkitError": "eventkit.infrastructure.errors",
    "ConfigurationError": "eventkit.infrastructure.errors",
    "ConcurrencyError": "eventkit.infrastructure.errors",
    "EventDecodingError": "eventkit.infrastructure.errors",
}

__all__ = [
    "ERASED",
    "Aggregate",
    "AlreadyRecordedError",
    "App",
    "Application",
    "ConcurrencyError",
    "ConfigurationError",
    "Context",
    "DomainEvent",
    "EventDecodingError",
    "EventkitError",
    "Immutable",
    "Metadata",
    "Outcome",
    "PersonalData",
    "Position",
    "Projection",
    "Queries",
    "Reaction",
    "ReactionContext",
    "ReadModelTimeoutError",
    "Runtime",
    "Settings",
    "SnapshotError",
    "Table",
    "TypeNameError",
    "UnhandledEventError",
    "WorkerOptions",
    "Workers",
    "application_env",
    "current_metadata",
    "event",
    "handles",
    "load_app",
    "metadata",
    "moved_module",
]

if TYPE_CHECKING:
    from eventsourcing.domain import event

    from eventkit.domain.application import AlreadyRecordedError, Application, Outcome
    from eventkit.domain.metadata import Metadata, current_metadata, metadata
    from eventkit.domain.model import Aggregate, DomainEvent, Immutable
    from eventkit.domain.names import TypeNameError, moved_module
    from eventkit.domain.personal import ERASED, PersonalData
    from eventkit.domain.snapshots import SnapshotError
    from eventkit.infrastructure.errors import (
        ConcurrencyError,
        ConfigurationError,
        EventDecodingError,
        EventkitError,
    )
    from eventkit.infrastructure.factory import application_env
    from eventkit.infrastructure.log import Position
    from eventkit.infrastructure.settings import Settings
    from eventkit.loading import load_app
    from eventkit.projections.app import App, Runtime
    from eventkit.projections.projection import (
        Context,
        Projection,
        Table,
        UnhandledEventError,
        handles,
    )
    from eventkit.projections.queries import Queries, ReadModelTimeoutError
    from eventkit.projections.reaction import Reaction, ReactionContext
    from eventkit.runner import WorkerOptions, Workers


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'eventkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

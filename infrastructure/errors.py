"""Errors raised by eventkit's infrastructure.

One root, :class:`EventkitError`, with a family per layer below it. Each message names what a
person needs to act on it: the stream (originator id), versions, notification ids, schema.
Errors that eventsourcing's ``Application`` already knows how to handle also inherit from the
matching eventsourcing class, so ``Application.save()`` keeps its documented behaviour.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.persistence import (
    IntegrityError as EventsourcingIntegrityError,
)
from eventsourcing.persistence import (
    MapperDeserialisationError,
)
from eventsourcing.persistence import (
    OperationalError as EventsourcingOperationalError,
)
from eventsourcing.persistence import (
    PersistenceError as EventsourcingPersistenceError,
)


class EventkitError(Exception):
    """The root of every error that eventkit raises on purpose."""


class ConfigurationError(EventkitError):
    """A setting is missing or has a value eventkit cannot use."""


class UsageError(ConfigurationError):
    """A command line or a setting eventkit cannot accept as given (a number out of its
    range, a system schema, a prompt with no terminal to answer it): ``eventkit`` exits 2,
    as for a command line its parser refuses."""


class UnsupportedFollowerError(ConfigurationError):
    """An eventsourcing follower that tracks notification ids was asked for: refused,
    since ids are not commit order and it would skip events that commit late."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what}: eventkit does not run eventsourcing's followers (ProjectionRunner, "
            "subscribe(gt=ID), ProcessApplication), which resume from the last notification "
            "id they saw. eventkit's writers take no table lock, so notification ids are "
            "not commit order: a save that drew ids 1..40 can commit after one that drew "
            "41..80, and such a follower would skip it. Follow the log with an "
            "eventkit.Projection (or eventkit.Reaction) run by `eventkit workers` (or "
            "eventkit.Workers in your own process): it tracks (transaction id, notification "
            "id) positions and sees every event once (docs/architecture.md)"
        )


class PersistenceError(EventkitError, EventsourcingPersistenceError):
    """Reading or writing the event store failed."""


class ConcurrencyError(PersistenceError, EventsourcingIntegrityError):
    """An append conflicted with events already recorded in the same stream.

    Nothing of the conflicting transaction was written. Reload the aggregate and retry
    the command.
    """

    def __init__(
        self,
        originator_id: UUID | str,
        conflicting_version: int,
        current_version: int | None,
        appended_versions: tuple[int, int],
        num_events: int,
    ) -> None:
        self.originator_id = originator_id
        self.conflicting_version = conflicting_version
        self.current_version = current_version
        self.appended_versions = appended_versions
        first, last = appended_versions
        current = "has no events" if current_version is None else f"is at version {current_version}"
        super().__init__(
            f"concurrency conflict in stream {originator_id}: version {conflicting_version} "
            f"is already recorded (the stream {current}); the append of versions "
            f"{first}..{last} was rejected, and none of the {num_events} event(s) in that "
            f"transaction were written"
        )


class DatabaseUnavailableError(PersistenceError, EventsourcingOperationalError):
    """The database could not be reached, after bounded retries."""


class AppendOutcomeUnknownError(PersistenceError, EventsourcingOperationalError):
    """The outcome of an append is not known.

    eventkit's recorder no longer raises it: after a lost connection the append's
    (stream, version) keys settle the outcome (all there with its content: committed;
    none: not committed; another writer's content: a :class:`ConcurrencyError`). Kept
    so that code catching it still imports.
    """


class EventDecodingError(EventkitError, MapperDeserialisationError):
    """A stored event could not be turned back into a domain event."""


class EventEncodingError(EventkitError, TypeError):
    """A domain event could not be turned into a stored event."""


class MigrationError(EventkitError):
    """The schema could not be created or upgraded."""


class SchemaNotReadyError(MigrationError):
    """The schema does not exist, or lags behind this eventkit's migrations, and this
    process does not create or upgrade it (a read-only command, or ``EVENTKIT_MIGRATE=off``)."""


class EmbeddedPostgresError(EventkitError):
    """The embedded PostgreSQL server could not be started, stopped or found."""


class EmbeddedPostgresStoppedError(EmbeddedPostgresError):
    """The embedded server is stopped and this command does not start it."""


class DuplicateWorkerError(EventkitError):
    """Another live worker process already uses this worker id."""

"""One application, declared for eventkit: what its commands, workers and tests load.

```python
# shop/eventkit_app.py
from eventkit import App

app = App(
    "shop",
    applications=[Shop],
    projections=[OrderSummaries, StockLevels],
    reactions=[ChargePayments, OrderMails],
    settings={"PAYMENT_GATEWAY_URL": "the payment gateway charge_payments calls"},
)
```

``eventkit --app shop.eventkit_app:app workers`` (or ``EVENTKIT_APP``, or
``[tool.eventkit] app = "shop.eventkit_app:app"`` in the service's pyproject.toml) runs
them; ``eventkit status``, ``rebuild``, ``dlq``, ``partitions`` and ``reset`` know them by
name. A consumer that needs services (an application to send commands to, a client of
another service) builds them in its ``construct(runtime)`` class method from the
:class:`Runtime` the process gives it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from eventkit.domain.application import Application
from eventkit.domain.names import EVENT_TYPES
from eventkit.infrastructure.errors import ConfigurationError
from eventkit.infrastructure.factory import application_env
from eventkit.infrastructure.settings import Settings
from eventkit.projections.projection import Consumer, Projection
from eventkit.projections.reaction import Reaction

_A = TypeVar("_A", bound=Application)


class UnknownConsumerError(ConfigurationError):
    """A command named a projection or reaction the application does not declare."""


@dataclass(frozen=True)
class App:
    """An application's declaration: its eventsourcing applications, its projections and
    reactions, and the settings they read.

    ``env`` holds defaults for the applications' environment (the process environment
    wins); ``settings`` names the environment variables the consumers read, with what
    each is for, for help texts and ``eventkit workers --help``.
    """

    name: str
    applications: Sequence[type[Application]] = ()
    projections: Sequence[type[Projection]] = ()
    reactions: Sequence[type[Reaction]] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "applications", tuple(self.applications))
        object.__setattr__(self, "projections", tuple(self.projections))
        object.__setattr__(self, "reactions", tuple(self.reactions))
        object.__setattr__(self, "env", dict(self.env))
        object.__setattr__(self, "settings", dict(self.settings))
        where = f"application {self.name!r}"
        checks: tuple[tuple[str, type[Any], Sequence[Any]], ...] = (
            ("projection", Projection, self.projections),
            ("reaction", Reaction, self.reactions),
        )
        for kind, base, classes in checks:
            for cls in classes:
                if not (isinstance(cls, type) and issubclass(cls, base)):
                    raise ConfigurationError(
                        f"{where}: {cls!r} among its {kind}s is not a {base.__name__} class"
                    )
        for application in self.applications:
            if not (isinstance(application, type) and issubclass(application, Application)):
                raise ConfigurationError(
                    f"{where}: {application!r} among its applications is not an eventkit "
                    "Application class (eventkit.domain.application.Application)"
                )
        seen: dict[str, type[Consumer]] = {}
        for consumer in self.consumers():
            name = getattr(consumer, "name", None)
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"{where}: {consumer.__qualname__} has no name")
            if name in seen:
                raise ConfigurationError(
                    f"{where}: {seen[name].__qualname__} and {consumer.__qualname__} are both "
                    f"named {name!r}; a name is a consumer's identity in the database"
                )
            seen[name] = consumer
            try:
                handled = consumer.event_types()
                for event_type in handled:
                    for declared in EVENT_TYPES.subclasses(event_type):
                        EVENT_TYPES.name(declared)  # an ambiguous name fails here, not later
            except TypeError as e:
                raise ConfigurationError(f"{where}: {consumer.__qualname__}: {e}") from e
            if not handled:
                raise ConfigurationError(
                    f"{where}: {consumer.__qualname__} ({name}) has no handlers: mark methods "
                    "with @handles"
                )

    def consumers(self) -> list[type[Consumer]]:
        """Every projection and reaction, projections first."""
        return [*self.projections, *self.reactions]

    def names(self) -> list[str]:
        return [c.name for c in self.consumers()]

    def consumer(self, name: str) -> type[Consumer]:
        """The projection or reaction called ``name``, or an error listing the known ones."""
        for cls in self.consumers():
            if cls.name == name:
                return cls
        raise UnknownConsumerError(f"{self.describe_unknown([name])}")

    def select(
        self, names: Iterable[str] = ()
    ) -> tuple[list[type[Projection]], list[type[Reaction]]]:
        """The named projections and reactions (every one when ``names`` is empty), or an
        error naming the unknown ones."""
        names = list(names)
        if not names:
            return list(self.projections), list(self.reactions)
        unknown = [n for n in names if n not in self.names()]
        if unknown:
            raise UnknownConsumerError(self.describe_unknown(unknown))
        return (
            [p for p in self.projections if p.name in names],
            [r for r in self.reactions if r.name in names],
        )

    def describe_unknown(self, names: Sequence[str]) -> str:
        """An error message for names this application does not declare."""
        return (
            f"application {self.name!r} has no projection or reaction "
            f"{', '.join(repr(n) for n in names)}; projections: "
            f"{', '.join(p.name for p in self.projections) or 'none'}; reactions: "
            f"{', '.join(r.name for r in self.reactions) or 'none'}"
        )

    def describe(self) -> str:
        """One line for help texts: the application and its consumers."""
        return (
            f"application {self.name!r}: projections "
            f"{', '.join(p.name for p in self.projections) or 'none'}; reactions "
            f"{', '.join(r.name for r in self.reactions) or 'none'}"
        )


class Runtime:
    """What a process running an application gives its consumers: settings and services.

    ``runtime.application(Shop)`` is this process's instance of an application class,
    recording with eventkit in the runtime's database and schema (one per class, made on
    first use); ``runtime.setting(NAME)`` reads a setting from the process environment,
    falling back to the application's ``env``.
    """

    def __init__(
        self,
        app: App,
        settings: Settings | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings or Settings.from_env(environ)
        self._environ = os.environ if environ is None else environ
        self._lock = threading.Lock()
        self._applications: dict[type[Application], Application] = {}

    def setting(self, name: str, default: str | None = None) -> str | None:
        """The value of setting ``name``: the process environment's, else the
        application's ``env`` default, else ``default``."""
        value = self._environ.get(name)
        if value is None or value == "":
            value = self.app.env.get(name)
        return default if value is None or value == "" else value

    def application_env(self) -> dict[str, str]:
        """The environment an application class is constructed with: the application's
        ``env`` defaults, under the process environment, under eventkit's persistence."""
        env = dict(self.app.env)
        env.update({k: self._environ[k] for k in self.app.env if k in self._environ})
        env.update(application_env(self.settings))
        return env

    def application(self, cls: type[_A]) -> _A:
        """This process's instance of the application class ``cls``."""
        with self._lock:
            found = self._applications.get(cls)
            if found is None:
                found = self._applications[cls] = cls(self.application_env())
        if not isinstance(found, cls):  # pragma: no cover - keyed by class
            raise TypeError(cls)
        return found

    def construct(self, consumer: type[Any]) -> Any:
        """Make ``consumer`` as a worker runs it (its ``construct(runtime)``)."""
        return consumer.construct(self)

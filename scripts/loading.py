"""Finding and loading the application that eventkit's commands and workers run.

The declaration (an :class:`eventkit.App`) is named ``module:attribute``, the way dramatiq,
celery and uvicorn name an application, and found in this order:

1. ``--app module:attribute`` on the command line;
2. the ``EVENTKIT_APP`` environment variable;
3. ``app = "module:attribute"`` under ``[tool.eventkit]`` in the ``pyproject.toml`` of the
   current directory or the nearest one above it.

The module is imported with the directory it was found from (the current directory, or the
pyproject.toml's) first on ``sys.path``, as uvicorn does, so a service's own packages load
without being installed.
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from eventkit.infrastructure.errors import ConfigurationError

if TYPE_CHECKING:
    from eventkit.projections.app import App

ENV_NAME = "EVENTKIT_APP"


class AppNotFoundError(ConfigurationError):
    """No application is named, or the one named cannot be loaded."""


@dataclass(frozen=True)
class AppSpec:
    """Where the application is: ``module:attribute``, the directory to import it from,
    and where that was said (for error messages)."""

    spec: str
    directory: Path
    source: str


def find_spec(
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> AppSpec | None:
    """The application named by ``--app``, ``EVENTKIT_APP`` or pyproject.toml, or None."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    if explicit:
        return AppSpec(explicit, cwd, "--app")
    if environ.get(ENV_NAME):
        return AppSpec(environ[ENV_NAME], cwd, ENV_NAME)
    for directory in (cwd, *cwd.parents):
        pyproject = directory / "pyproject.toml"
        if not pyproject.is_file():
            continue
        try:
            data = tomllib.loads(pyproject.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise AppNotFoundError(f"cannot read {pyproject}: {e}") from None
        app = data.get("tool", {}).get("eventkit", {}).get("app")
        if app is None:
            continue
        if not isinstance(app, str):
            raise AppNotFoundError(f"{pyproject}: [tool.eventkit] app must be a string")
        return AppSpec(app, directory, f"[tool.eventkit] in {pyproject}")
    return None


def load(spec: AppSpec) -> App:
    """Import ``spec``'s module and return its :class:`eventkit.App`."""
    from eventkit.projections.app import App

    module_name, colon, attribute = spec.spec.partition(":")
    if not colon or not module_name or not attribute:
        raise AppNotFoundError(
            f"{spec.source} names {spec.spec!r}; expected module:attribute, e.g. "
            "myservice.eventkit_app:app"
        )
    directory = str(spec.directory)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise AppNotFoundError(
                f"{spec.source} names {spec.spec!r}, but module {e.name!r} is not found "
                f"(looked in {directory} and the installed packages)"
            ) from e
        raise
    found: object = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise AppNotFoundError(
                f"{spec.source} names {spec.spec!r}, but module {module_name!r} has no "
                f"attribute {attribute!r}"
            ) from None
    if not isinstance(found, App):
        raise AppNotFoundError(
            f"{spec.source} names {spec.spec!r}, which is a {type(found).__name__}, not an "
            "eventkit.App"
        )
    return found


def load_app(
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> App:
    """The application named by ``--app``, ``EVENTKIT_APP`` or pyproject.toml; an error
    that says how to name one when none is."""
    spec = find_spec(explicit, environ, cwd)
    if spec is None:
        raise AppNotFoundError(
            "no application to run: name it with --app module:attribute, the EVENTKIT_APP "
            'environment variable, or app = "module:attribute" under [tool.eventkit] in '
            "your pyproject.toml"
        )
    return load(spec)

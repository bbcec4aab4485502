"""What every command shares: the loaded application and the settings."""

from __future__ import annotations

import argparse
import functools

from eventkit.infrastructure.settings import Settings
from eventkit.projections.app import App


@functools.cache
def _app(spec: str | None) -> App:
    from eventkit.loading import load_app

    return load_app(spec)


def app_of(args: argparse.Namespace) -> App:
    """The application the command runs on (``--app``, ``EVENTKIT_APP`` or pyproject.toml)."""
    return _app(getattr(args, "app", None))


def describe_app(spec: str | None) -> str:
    """One sentence naming the application's consumers, for a command's help; empty when
    no application loads (the command itself then says why)."""
    from eventkit.infrastructure.errors import EventkitError

    try:
        return _app(spec).describe().capitalize() + "."
    except EventkitError:
        return ""


def settings_of(args: argparse.Namespace) -> Settings:
    """eventkit's settings for the command (the environment's)."""
    return Settings.from_env()

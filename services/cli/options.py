"""Options and settings loading shared by every `heimdall` sub-command module."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from shared.env import EnvSettings
from shared.errors import ConfigurationError
from shared.logs import configure_logging
from shared.settings import Settings

E = TypeVar("E", bound=EnvSettings)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data dir (env HEIMDALL_DATA_DIR).")
]


@functools.cache
def from_env(kind: type[E]) -> E:
    """Settings of one kind, loaded once per process; a bad variable ends the command with
    its name and the expected form (exit status 2), never a traceback."""
    try:
        return kind.from_env()
    except ConfigurationError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment with the command-line flags given, logging configured."""
    settings = from_env(Settings).with_overrides(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    return settings

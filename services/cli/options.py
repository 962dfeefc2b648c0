"""Options and settings loading shared by every `heimdall` sub-command module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from shared.logs import configure_logging
from shared.settings import Settings

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data dir (env HEIMDALL_DATA_DIR).")
]


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment with the command-line flags given, logging configured."""
    settings = Settings.from_env().with_overrides(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    return settings

"""How `heimdall api` serves: one or several processes on one port, under uvicorn or Granian.

With `workers > 1` every worker is its own process with its own app, database pool and live
hub (one pub/sub connection each: pub/sub broadcasts, so every process pushes every event to
its own WebSockets); the server spreads connections over them on one listening socket. Worker
processes build their app with `app_from_env` from the `HEIMDALL_*` variables the parent
exported after resolving the stores, so they all use the same Redis and PostgreSQL.
"""

from __future__ import annotations

import os
from enum import StrEnum

from litestar import Litestar

from shared.settings import Settings

WS_MAX_BYTES = 64 * 1024
"""Largest WebSocket message a client may send (the server only expects pings)."""

BACKLOG = 4096
"""Pending connections the listening socket holds: a thousand viewers reconnect at once."""


class Server(StrEnum):
    UVICORN = "uvicorn"
    GRANIAN = "granian"


def app_from_env() -> Litestar:
    """The app of one worker process, from the environment its parent prepared."""
    from services.api.app import create_app
    from shared.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings)


def export(settings: Settings) -> None:
    """Put the resolved settings where worker processes read them."""
    os.environ.update(
        HEIMDALL_REDIS_URL=settings.redis_url or "",
        HEIMDALL_DATABASE_URL=settings.database_url or "",
        HEIMDALL_DATA_DIR=str(settings.data_dir.resolve()),
        HEIMDALL_HOST=settings.host,
        HEIMDALL_PORT=str(settings.port),
    )


def serve(settings: Settings, workers: int = 1, server: Server = Server.UVICORN) -> None:
    """Serve the API until interrupted (store URLs must be resolved)."""
    if server == Server.GRANIAN:
        _granian(settings, workers)
        return
    import uvicorn

    options = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "warning",
        # uvicorn's own logging config would give its loggers their own plain-text handlers;
        # without it their records reach the root handler (JSON when HEIMDALL_LOG_JSON=1).
        "log_config": None,
        "ws_max_size": WS_MAX_BYTES,
        # Status messages are ~500 bytes; per-message deflate costs more CPU than it saves and
        # dominated fan-out time in bench/push_latency.py (p99 660 ms → 54 ms at 100 clients).
        "ws_per_message_deflate": False,
        "backlog": BACKLOG,
    }
    if workers == 1:
        from services.api.app import create_app

        uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]
        return
    export(settings)
    uvicorn.run(
        "services.cli.serve:app_from_env",
        factory=True,
        workers=workers,
        **options,  # type: ignore[arg-type]
    )


def _granian(settings: Settings, workers: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    export(settings)
    Granian(
        "services.cli.serve:app_from_env",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=workers,
        websockets=True,
        backlog=BACKLOG,
        log_level=LogLevels.warning,
    ).serve()

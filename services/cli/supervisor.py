"""What `heimdall up` runs, kept running: every part is a supervised service.

The embedded Valkey and PostgreSQL, the API, the recorder and the workers are each started once
and watched; one that exits on its own (crashed, killed, out of memory) is logged with its exit
code and started again after a backoff (0.5 s doubling to 30 s, reset once it has run for a
minute). Only `stop_all` — Ctrl-C or SIGTERM of `up` — stops them: the applications first, all
at once (a worker needs its shutdown grace to checkpoint), then the stores they write to. Every
child runs in its own session, so a terminal's Ctrl-C reaches `up` alone and the order holds;
what a child leaves behind (a worker's forkserver and training processes) is killed with its
process group, both when it crashes and at the end. `up` is also a child subreaper, so
processes orphaned below it (the postmaster, once `pg_ctl` has exited) stay its own: it reaps
them and, at the very end, kills whatever of them is left. Nothing outlives `up`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil
import structlog

log = structlog.get_logger(__name__)

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0
"""A service that ran this long before it exited starts again after the initial backoff."""

STORE, APP = 0, 1
"""Stop tiers: applications stop before the stores they write to."""


class StartError(RuntimeError):
    """A service did not come up (it exited, or was not ready in time)."""


class Service(Protocol):
    """One supervised part of the system."""

    name: str
    tier: int

    def start(self, *, wait_ready: bool = True) -> None:
        """Start it; with `wait_ready`, return once it serves (raises StartError)."""

    def poll(self) -> int | None:
        """Its exit code once it has exited on its own (negative: killed by that signal)."""

    def pids(self) -> list[int]:
        """The processes it consists of now (for reaping and for the final sweep)."""

    def request_stop(self) -> None:
        """Ask it to stop (once), without waiting."""

    def stop(self, deadline: float) -> None:
        """Stop it by `deadline` (time.monotonic), killing whatever is left then."""


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class Child:
    """A command run as a child process in its own session (and process group)."""

    name: str
    argv: list[str]
    env: Mapping[str, str] | None = None
    tier: int = APP
    ready: Callable[[], bool] | None = None
    """Polled after a start until it returns True."""
    ready_timeout_s: float = 60.0
    stop_signal: int = signal.SIGTERM
    cwd: Path | None = None
    output: Path | None = None
    """File the child's stdout and stderr are appended to (opened per start, and closed here
    once the child holds its own descriptor)."""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopping: bool = field(default=False, repr=False)

    def start(self, *, wait_ready: bool = True) -> None:
        self._stopping = False
        with contextlib.ExitStack() as files:
            out = None if self.output is None else files.enter_context(self.output.open("ab"))
            self.proc = subprocess.Popen(
                self.argv,
                env=None if self.env is None else dict(self.env),
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
            )
        log.info("started", service=self.name, pid=self.proc.pid)
        if not wait_ready or self.ready is None:
            return
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.ready():
            code = self.proc.poll()
            if code is not None:
                raise StartError(f"{self.name} exited during start-up (exit code {code})")
            if time.monotonic() >= deadline:
                raise StartError(f"{self.name} not ready after {self.ready_timeout_s:.0f} s")
            time.sleep(0.05)

    def poll(self) -> int | None:
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None:
            _kill_group(self.proc.pid)  # what it leaves behind goes with it
        return code

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    def request_stop(self) -> None:
        proc = self.proc
        if proc is not None and not self._stopping and proc.poll() is None:
            self._stopping = True
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)

    def stop(self, deadline: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self.request_stop()
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("did not stop in time; killing", service=self.name, pid=proc.pid)
        _kill_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


@dataclass
class _Watched:
    service: Service
    started_at: float
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """Owns the services: starts them, restarts the ones that exit, stops them all."""

    def __init__(
        self,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        stable_s: float = STABLE_S,
        *,
        owns_descendants: bool = False,
    ) -> None:
        """`owns_descendants`: this process exists to run the services (`heimdall up`), so
        it reaps every orphan below it and kills what is left at the end (never in a process
        that has other children, such as a test runner)."""
        self._owns = owns_descendants
        self._watched: list[_Watched] = []
        self._initial = backoff_initial_s
        self._max = backoff_max_s
        self._stable = stable_s
        self.restarts = 0

    def start(self, service: Service) -> None:
        """Start a service (waiting until it is ready) and watch it from now on."""
        self._watched.append(_Watched(service, time.monotonic()))
        service.start(wait_ready=True)

    def watch_once(self) -> None:
        """Notice exits, restart what is due, reap orphans."""
        now = time.monotonic()
        for item in self._watched:
            if item.restart_at is None:
                code = item.service.poll()
                if code is not None:
                    self._schedule(item, now, f"exited with code {code}", exit_code=code)
            elif now >= item.restart_at:
                self._restart(item)
        if self._owns:
            reap_orphans(self._known_pids())

    def _schedule(self, item: _Watched, now: float, why: str, **fields: object) -> None:
        if now - item.started_at >= self._stable:
            item.failures = 0
        delay = min(self._max, self._initial * 2**item.failures)
        item.failures += 1
        item.restart_at = now + delay
        log.error(
            f"{item.service.name} {why}; restarting",
            service=item.service.name,
            restart_in_s=delay,
            **fields,
        )

    def _restart(self, item: _Watched) -> None:
        item.restart_at = None
        item.started_at = time.monotonic()
        try:
            item.service.start(wait_ready=False)
        except Exception as exc:  # a start that fails is retried like a crash
            self._schedule(item, time.monotonic(), "failed to start", error=str(exc))
            return
        self.restarts += 1
        log.info("restarted", service=item.service.name, restarts=item.failures)

    def _known_pids(self) -> set[int]:
        return {pid for item in self._watched for pid in item.service.pids()}

    def run(self, until: Callable[[], bool], interval_s: float = 0.2) -> None:
        """Watch until `until()` is true."""
        while not until():
            self.watch_once()
            time.sleep(interval_s)

    def stop_all(self, timeout_s: float = 10.0) -> None:
        """Stop every service, applications first, each tier within `timeout_s`, then kill any
        process still left below us."""
        for tier in (APP, STORE):
            deadline = time.monotonic() + timeout_s
            items = [i for i in reversed(self._watched) if i.service.tier == tier]
            for item in items:
                item.service.request_stop()
            for item in items:
                item.service.stop(deadline)
        self._watched.clear()
        if self._owns:
            kill_descendants()


def become_subreaper() -> bool:
    """Make orphaned descendants our children (Linux), so they can be reaped and killed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_orphans(known: set[int]) -> None:
    """Reap exited children that no service owns (orphans handed to us as subreaper)."""
    for child in psutil.Process().children():
        if child.pid in known:
            continue
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(child.pid, os.WNOHANG)


def kill_descendants(timeout_s: float = 5.0) -> None:
    """Kill and reap every process still below us."""
    me = psutil.Process()
    left = me.children(recursive=True)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=timeout_s)
    for child in me.children():
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(child.pid, os.WNOHANG)

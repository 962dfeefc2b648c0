"""Processes a test starts, and stopping them for sure: `heimdall up` as a user runs it.

Every stop here ends with SIGKILL of whatever is left — the process's group and every
descendant seen while it ran (the embedded PostgreSQL runs in a session of its own) — so a
process that ignores SIGINT, or hangs while stopping, cannot outlive its test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

IGNORING_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN);"
    " os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
"""A wrapper that execs its arguments with SIGINT ignored, as a non-interactive shell does for
a command started with `&`."""


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a command under test: no HEIMDALL_* of ours, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Tree:
    """A child process started in its own session, and every descendant seen since."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.seen: dict[int, psutil.Process] = {}

    def descendants(self) -> list[psutil.Process]:
        """Its descendants now (remembered for the final kill)."""
        try:
            now = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            now = []
        for proc in now:
            self.seen.setdefault(proc.pid, proc)
        return now

    def alive(self) -> list[psutil.Process]:
        """Every process of the tree seen so far that still runs."""
        self.descendants()
        out = []
        for proc in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
        return out

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int | None:
        """Send `sig`, wait up to `timeout` for the process to exit; then SIGKILL whatever of
        the tree is left, in any case. Returns the exit code, or None when it had to be
        killed."""
        code: int | None = None
        try:
            self.descendants()
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                self.descendants()
                time.sleep(0.05)
            code = self.proc.poll()
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for proc in self.alive():
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self._out.close()
        return code


class Up(Tree):
    """A running `heimdall up` on `port` with its data under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *extra: str,
        env: dict[str, str] | None = None,
        ignore_sigint: bool = False,
    ) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "services.cli.main", "up"]
        argv += ["--data-dir", str(data_dir), "--port", str(port), *extra]
        if ignore_sigint:
            argv = [sys.executable, "-c", IGNORING_SIGINT, *argv[1:]]
        super().__init__(argv, env or cli_env(), data_dir.parent / f"up-{port}.log")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            if re.search(r"^Heimdall is ready in \d", self.output(), re.M):
                self.descendants()
                return
            time.sleep(0.1)
        raise AssertionError(f"not ready in {timeout} s:\n{self.output()}")

    def service_pid(self, name: str) -> int | None:
        """The pid of one of its services now (`api`, `recorder`, `worker`, `valkey`,
        `postgres`: the postmaster), or None while it has none."""
        for proc in psutil.Process(self.proc.pid).children():
            with contextlib.suppress(psutil.Error):
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmdline = proc.cmdline()
                if name in ("valkey", "postgres"):
                    if name in proc.name():
                        return proc.pid
                elif cmdline[-2:] == ["services.cli.main", name]:
                    return proc.pid
        return None

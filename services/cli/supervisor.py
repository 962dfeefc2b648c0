"""Child processes of `heimdall up`: started together, stopped together, in reverse order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)


@dataclass
class Supervisor:
    """Owns child processes; `stop()` terminates them newest first and reaps every one."""

    env: dict[str, str]
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", *args],
            env=self.env,
            # Children ignore the terminal's Ctrl-C; the supervisor stops them in order.
            start_new_session=True,
        )
        self.children.append((name, proc))
        log.info("started", service=name, pid=proc.pid)
        return proc

    def failed(self) -> str | None:
        """The name of a child that exited on its own, if any."""
        for name, proc in self.children:
            if proc.poll() is not None:
                return f"{name} (exit code {proc.returncode})"
        return None

    def stop(self, timeout: float = 10.0) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("did not stop in time; killing", service=name, pid=proc.pid)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.children.clear()

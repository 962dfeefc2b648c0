"""`heimdall` commands as real subprocesses on a test's stores."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def service_env(settings: Settings, **variables: str) -> dict[str, str]:
    """This process's environment without its HEIMDALL_* variables, pointed at the test's
    stores and data dir, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    env.update(
        HEIMDALL_REDIS_URL=settings.redis_url or "",
        HEIMDALL_DATABASE_URL=settings.database_url or "",
        HEIMDALL_DATA_DIR=str(settings.data_dir),
        PYTHONUNBUFFERED="1",
        **variables,
    )
    return env


@contextlib.contextmanager
def heimdall(*args: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`heimdall ARGS...` with stdout and stderr in `log`, in its own process group; stopped
    (SIGTERM, then SIGKILL after 15 s) when the block ends, however it ends, and then whatever
    is left of its group is killed (a server's worker processes that outlived their parent)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def run_heimdall(
    settings: Settings, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `heimdall ARGS` to its end (as a user runs it) on the test's stores; its output is
    captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=REPO,
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )

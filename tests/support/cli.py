"""The `heimdall` command as a user runs it (a real subprocess), against a test's stores."""

from __future__ import annotations

import os
import subprocess
import sys

from shared.settings import Settings


def heimdall(
    settings: Settings, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `heimdall ARGS` with the test's Redis, database and data dir in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    env |= {
        "HEIMDALL_REDIS_URL": settings.redis_url or "",
        "HEIMDALL_DATABASE_URL": settings.database_url or "",
        "HEIMDALL_DATA_DIR": str(settings.data_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )

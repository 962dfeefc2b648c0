"""How long `heimdall up` takes from launch to ready, with the package installed and the data dir
already initialised (the contract's target: under 10 s). Also times the embedded stores alone.

    .venv/bin/python bench/startup.py [--runs 5] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe

from services.cli.embedded import embedded_stores
from shared.net import free_port
from shared.settings import Settings


def time_up(data_dir: Path, workers: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "up",
            "--data-dir",
            str(data_dir),
            "--port",
            str(free_port()),
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if re.match(r"Heimdall is ready in", line):
            elapsed = time.monotonic() - started
            break
    else:
        raise RuntimeError("heimdall up exited before it was ready")
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    return elapsed


def time_stores(data_dir: Path) -> float:
    started = time.monotonic()
    with embedded_stores(Settings(data_dir=data_dir)):
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="heimdall-bench-"))
    try:
        data_dir = root / "data"
        time_up(data_dir, args.workers)  # initialise the data dir (initdb etc.), not measured
        stores = [time_stores(data_dir) for _ in range(args.runs)]
        up = [time_up(data_dir, args.workers) for _ in range(args.runs)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {describe()}")
    print(
        f"embedded Valkey + PostgreSQL start: median {statistics.median(stores):.2f} s "
        f"(min {min(stores):.2f}, max {max(stores):.2f}, {args.runs} runs)"
    )
    print(
        f"heimdall up (--workers {args.workers}) to ready: median {statistics.median(up):.2f} s "
        f"(min {min(up):.2f}, max {max(up):.2f}, {args.runs} runs)"
    )


if __name__ == "__main__":
    main()

"""`heimdall tensorboard`: TensorBoard over every job's event files (one run per job).

With object storage (`HEIMDALL_STORAGE_URL=s3://...`) the event files that workers on other
machines wrote are pulled from the store into this data dir first, and again every
`SYNC_INTERVAL_S` while TensorBoard runs."""

from __future__ import annotations

import subprocess
import sys

import structlog

from services.tracking.export import SYNC_INTERVAL_S, pull_tensorboard
from services.tracking.settings import tensorboard_installed, tensorboard_root
from shared.errors import HeimdallError
from shared.settings import Settings
from shared.storage import BlobStore, open_store

log = structlog.get_logger(__name__)

STOP_GRACE_S = 5.0
"""How long TensorBoard may take to exit after Ctrl-C before it is killed."""


def tensorboard_command(settings: Settings, port: int, host: str) -> list[str]:
    """The TensorBoard command line: this interpreter, so the venv's TensorBoard is used."""
    return [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(tensorboard_root(settings)),
        "--host",
        host,
        "--port",
        str(port),
        "--reload_interval",
        "5",
    ]


def start_tensorboard(settings: Settings, port: int, host: str) -> subprocess.Popen[bytes]:
    """Start TensorBoard over `<data dir>/tensorboard`; the caller owns the process."""
    if not tensorboard_installed():
        raise SystemExit(
            "TensorBoard is not installed: pip install 'heimdall-training[tensorboard]'"
        )
    root = tensorboard_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(tensorboard_command(settings, port, host))


def stop_tensorboard(process: subprocess.Popen[bytes]) -> None:
    """Ask TensorBoard to exit, then kill it if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _pull(store: BlobStore, settings: Settings) -> None:
    try:
        pull_tensorboard(store, tensorboard_root(settings))
    except HeimdallError as exc:
        log.warning("tensorboard files not pulled from storage", reason=exc.detail)


def run_tensorboard(settings: Settings, port: int = 6006, host: str = "127.0.0.1") -> None:
    """Serve TensorBoard until Ctrl-C (or SIGTERM turned into KeyboardInterrupt); its exit
    status becomes ours when it stops by itself (port taken, bad flags)."""
    store = open_store(settings)
    _pull(store, settings)
    process = start_tensorboard(settings, port, host)
    logdir = str(tensorboard_root(settings))
    log.info("tensorboard started", url=f"http://{host}:{port}/", logdir=logdir)
    try:
        while True:
            try:
                code = process.wait(timeout=SYNC_INTERVAL_S)
                break
            except subprocess.TimeoutExpired:
                _pull(store, settings)
    except KeyboardInterrupt:
        code = 0
    finally:
        stop_tensorboard(process)
    if code:
        raise SystemExit(code)

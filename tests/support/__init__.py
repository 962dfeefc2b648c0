"""Helpers shared by the test modules: `import support` (this package) and its modules
`support.ws`, `support.dashboard` and `support.worker`. No test module imports another; every
poll helper, free port and in-process server is here once."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from services.tracking.settings import TrackingSettings
from shared.datasets import Recording
from shared.net import free_port
from shared.settings import Settings
from shared.synth import CLASSES, synth_dataset
from shared.wavio import write_wav

TINY: dict[str, Any] = {
    "model_architecture": "convnext_atto",
    "pretrained": False,
    "batch_size": 16,
    "num_workers": 0,
    "n_fft": 256,
    "hop_length": 64,
    "n_mels": 32,
    "accelerator": "cpu",
    "min_snr_db": -100.0,
    "only_approved": False,
    "warmup_epochs": 0,
    "learning_rate": 0.002,
}
"""A config that trains on a CPU in seconds: tests spread it and set what they exercise."""


async def wait_for(
    check: Callable[[], Any],
    *,
    timeout: float = 15.0,
    what: str = "condition",
    step: float = 0.02,
) -> Any:
    """Poll `check` (a plain or an async callable) until it returns something truthy (and
    return that), or fail after `timeout` seconds naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what} (last: {value!r})"
            )
        await asyncio.sleep(step)


def wait_until(
    check: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition", step: float = 0.1
) -> Any:
    """`wait_for` for tests without an event loop (driving subprocesses): poll the plain
    callable `check` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what} (last: {value!r})"
            )
        time.sleep(step)


def synthetic_recordings(
    root: Path,
    count: int,
    *,
    seed: int = 5,
    labels: dict[str, str] | None = None,
    iq: bool = False,
) -> list[Recording]:
    """`count` synthetic recordings of 0.25 s at 8 kHz as WAV files, without a database.
    `labels`: only these synthetic classes, each written under its new label. The files hold
    I and Q; `iq=False` records them as real (one channel: a job reads the I channel alone),
    `iq=True` as IQ."""
    classes = tuple(labels) if labels else CLASSES
    out = []
    for rec in synth_dataset(count, seed=seed, duration_s=0.25, classes=classes):
        label = labels[rec.label] if labels else rec.label
        rid = str(uuid.uuid4())
        path = root / label / f"{rid}.wav"
        write_wav(path, rec.samples, rec.sample_rate, subtype="FLOAT" if iq else "PCM_16")
        channels = 2 if iq else 1
        out.append(
            Recording(
                rid, str(path), label, rec.snr_db, rec.approved, rec.sample_rate, 0.25, channels
            )
        )
    return out


REQUEST_TIMEOUT_S = 60.0
"""A request's limit in the system tests (httpx's default of 5 s is short on a loaded machine)."""


@contextlib.asynccontextmanager
async def running_system(
    settings: Settings, tracking: TrackingSettings | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The whole system in this process: the recorder, an arq worker (training in its own
    processes, followed by the `tracking` trackers) and the API, stopped in reverse order.

    The API is served on a real port on this event loop, not through litestar's test client:
    that client's transport blocks the calling loop for the length of each request, freezing
    the recorder and the worker beside it; a DELETE then waited forever on a row lock the
    frozen recorder held in its open transaction."""
    from services.recorder.app import run_recorder
    from services.worker.app import create_worker

    stop = asyncio.Event()
    recorder = asyncio.create_task(run_recorder(settings, stop=stop))
    worker = create_worker(settings, handle_signals=False, poll_delay_s=0.05, tracking=tracking)
    working = asyncio.create_task(worker.async_run())
    try:
        async with (
            serve_api(settings) as base,
            httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S) as client,
        ):
            yield client
    finally:
        working.cancel()
        await asyncio.gather(working, return_exceptions=True)
        await worker.close()
        stop.set()
        await asyncio.wait_for(recorder, 30)


@contextlib.asynccontextmanager
async def serve_api(settings: Settings, port: int | None = None) -> AsyncIterator[str]:
    """The real API under uvicorn on this event loop (a real port); yields its base URL."""
    from services.api.app import create_app

    port = port or free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(
            lambda: server.started or task.done(), timeout=30, what="the API server to start"
        )
        if task.done():
            task.result()
            raise RuntimeError("the API server stopped while starting")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 30)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


__all__ = [
    "TINY",
    "free_port",
    "running_system",
    "serve_api",
    "synthetic_recordings",
    "wait_for",
    "wait_until",
]

"""Helpers shared by several test modules (imported as `support`, like `test_ws_support`)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from shared.datasets import Recording
from shared.settings import Settings
from shared.synth import synth_dataset
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
    check: Callable[[], Awaitable[Any]],
    *,
    timeout: float = 15.0,
    what: str = "condition",
    step: float = 0.02,
) -> Any:
    """Poll `check` until it returns something truthy (and return that), or fail after
    `timeout` seconds naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what} (last: {value!r})"
            )
        await asyncio.sleep(step)


def synthetic_recordings(root: Path, count: int, *, seed: int = 5) -> list[Recording]:
    """`count` synthetic recordings of 0.25 s at 8 kHz as WAV files, without a database."""
    out = []
    for rec in synth_dataset(count, seed=seed, duration_s=0.25):
        rid = str(uuid.uuid4())
        path = root / rec.label / f"{rid}.wav"
        write_wav(path, rec.samples, rec.sample_rate)
        out.append(
            Recording(rid, str(path), rec.label, rec.snr_db, rec.approved, rec.sample_rate, 0.25, 1)
        )
    return out


@contextlib.asynccontextmanager
async def running_system(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """The whole system in this process: the recorder, an arq worker (training in its own
    processes) and the API, stopped in reverse order."""
    from services.api.app import create_app
    from services.recorder.app import run_recorder
    from services.worker.app import create_worker

    stop = asyncio.Event()
    recorder = asyncio.create_task(run_recorder(settings, stop=stop))
    worker = create_worker(settings, handle_signals=False, poll_delay_s=0.05)
    working = asyncio.create_task(worker.async_run())
    try:
        async with AsyncTestClient(app=create_app(settings)) as client:
            yield client
    finally:
        working.cancel()
        await asyncio.gather(working, return_exceptions=True)
        await worker.close()
        stop.set()
        await asyncio.wait_for(recorder, 30)

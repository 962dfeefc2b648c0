"""Helpers of the dashboard tests: Chromium, a recorder process, synthetic training."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from shared.emit import AsyncEmitter
from shared.events import BatchPoint, BatchProgress, EpochCompleted, JobCompleted, JobStarted
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def find_chromium() -> str | None:
    """Debian's Chromium (installed by scripts/browser-setup), or HEIMDALL_CHROMIUM."""
    for candidate in (
        os.environ.get("HEIMDALL_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.asynccontextmanager
async def recorder_process(settings: Settings, log_path: Path) -> AsyncIterator[None]:
    """`python -m services.recorder` on the test's stores, so that job rows follow the events."""
    assert settings.redis_url and settings.database_url
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.recorder",
            "--redis-url",
            settings.redis_url,
            "--database-url",
            settings.database_url,
            "--data-dir",
            str(settings.data_dir),
            "--block-ms",
            "50",
            cwd=REPO,
            stdout=log,
            stderr=log,
        )
        try:
            yield
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def epoch_event(
    job_id: str, epoch: int, total: int, seed: int = 0, lr: float = 0.003
) -> EpochCompleted:
    """An epoch of a plausible run: losses fall, accuracies rise, cosine learning rate."""
    rng = random.Random(seed * 1000 + epoch)
    t = epoch / total
    noise = lambda scale: rng.uniform(-scale, scale)  # noqa: E731
    lr *= 0.5 * (1 + math.cos(math.pi * (epoch - 1) / total))
    val_loss = 1.9 * math.exp(-2.6 * t) + 0.28 + noise(0.04)
    return EpochCompleted(
        job_id=job_id,
        epoch=epoch,
        total_epochs=total,
        train_loss=1.9 * math.exp(-3.2 * t) + 0.12 + noise(0.03),
        val_loss=val_loss,
        train_accuracy=min(0.99, 0.96 - 0.8 * math.exp(-3.4 * t) + noise(0.01)),
        val_accuracy=min(0.99, 0.9 - 0.74 * math.exp(-2.9 * t) + noise(0.015)),
        learning_rate=lr,
        gradient_norm=1.5 * math.exp(-t) + noise(0.1),
        epoch_time_s=2.0 + noise(0.2),
    )


async def train(
    emitter: AsyncEmitter,
    job_id: str,
    epochs: range,
    total: int,
    *,
    batches: int = 8,
    seed: int = 0,
    lr: float = 0.003,
    started: bool = True,
    complete: bool = False,
) -> None:
    """Emits what a worker would: start, batch progress, epoch ends and (optionally) the end."""
    rng = random.Random(seed)
    if started:
        await emitter.emit(
            JobStarted(job_id=job_id, total_batches=batches, train_samples=136, val_samples=34)
        )
    for epoch in epochs:
        base = epoch_event(job_id, epoch, total, seed, lr)
        for half in (batches // 2, batches):
            points = [
                BatchPoint(
                    epoch=epoch,
                    batch=b,
                    loss=base.train_loss * (1.25 - 0.5 * b / batches) + rng.uniform(-0.08, 0.08),
                    accuracy=base.train_accuracy,
                    learning_rate=base.learning_rate,
                    gradient_norm=base.gradient_norm,
                    ts=time.time(),
                )
                for b in range(half - batches // 2 + 1, half + 1)
            ]
            await emitter.emit(
                BatchProgress(
                    job_id=job_id, epoch=epoch, batch=half, total_batches=batches, points=points
                )
            )
        await emitter.emit(base)
    if complete:
        await emitter.emit(JobCompleted(job_id=job_id, epochs_run=total))

"""Helpers of the worker tests: a small config, queueing a job, a burst-mode worker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import arq
import asyncpg
import redis
from arq.connections import RedisSettings

from services.worker.app import create_worker
from shared import keys
from shared.config import TrainingConfig
from shared.datasets import write_synthetic
from shared.events import AnyEvent, decode_event
from shared.jobs import insert_job
from shared.settings import Settings
from shared.storage import open_store
from support import TINY
from support.cli import REPO, service_env
from support.processes import Tree

SMALL: dict[str, Any] = {**TINY, "dataset": "synth", "seed": 7}
"""TINY on the `synth` dataset that `synth_dataset` writes, seeded."""


def small_config(**overrides: Any) -> TrainingConfig:
    return TrainingConfig(**{**SMALL, **overrides})


def events_of(client: redis.Redis, job_id: str) -> list[AnyEvent]:
    """The job's events as its Redis stream holds them, in order."""
    return [decode_event(f[b"data"]) for _, f in client.xrange(keys.job_stream(job_id))]


async def submit(settings: Settings, db: asyncpg.Connection, config: TrainingConfig) -> str:
    """Insert a job row and queue it, as the API does; returns the job id."""
    task_id = str(uuid.uuid4())
    row = await insert_job(db, "test job", config, task_id=task_id)
    pool = await arq.create_pool(
        RedisSettings.from_dsn(settings.redis_url or ""), default_queue_name=keys.ARQ_QUEUE
    )
    try:
        await pool.enqueue_job(
            "train_job", str(row["id"]), _job_id=task_id, _queue_name=keys.ARQ_QUEUE
        )
    finally:
        await pool.aclose()
    return str(row["id"])


async def synth_dataset(settings: Settings, db: asyncpg.Connection) -> str:
    """The `synth` dataset: 84 synthetic recordings of 0.25 s."""
    await write_synthetic(db, open_store(settings), "synth", 84, seed=1, duration_s=0.25)
    return "synth"


@asynccontextmanager
async def burst_worker(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """A burst-mode worker running in the background; it ends when the queue is drained.
    Closed even when the test fails; a failing close never hides the test's own error."""
    worker = create_worker(settings, burst=True, handle_signals=False, poll_delay_s=0.05)
    task = asyncio.create_task(worker.async_run())
    try:
        yield task
        await asyncio.wait_for(asyncio.shield(task), timeout=120)
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            await asyncio.shield(worker.close())
        except (asyncio.CancelledError, Exception):
            pass


FAST_HEARTBEAT = {"HEIMDALL_WORKER_HEARTBEAT_S": "0.2", "HEIMDALL_WORKER_TTL_S": "2"}
"""A worker's record refreshed five times a second and gone 2 s after its last refresh."""


@contextlib.contextmanager
def worker_process(settings: Settings, log: Path, **env: str) -> Iterator[Tree]:
    """`heimdall worker` as a real process (in its own session) on the test's stores, with a
    fast heartbeat; it and every process it started are killed when the block ends."""
    argv = [sys.executable, "-m", "services.cli.main", "worker"]
    tree = Tree(argv, service_env(settings, **{**FAST_HEARTBEAT, **env}), log, cwd=REPO)
    try:
        yield tree
    finally:
        tree.stop(signal.SIGTERM, timeout=20)

"""The worker end to end: arq in burst mode, real Valkey and PostgreSQL, real training processes.

Assertions are on the events the worker emits (the recorder, not the worker, writes rows) and
on the artifact files.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import asyncpg
import pytest
import redis
import redis.asyncio as aredis
from support import wait_for
from support.worker import burst_worker, events_of, small_config, submit

from services.worker.presence import probe
from shared import keys
from shared.commands import CancelJob, DeleteJob, send_command
from shared.events import (
    BatchProgress,
    CheckpointSaved,
    EpochCompleted,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobStarted,
)
from shared.settings import Settings

pytestmark = [
    pytest.mark.usefixtures("children_one_thread"),
    pytest.mark.slow,
    # arq 0.28's Worker.close() calls redis' deprecated `close()`; nothing of ours.
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]


async def test_job_runs_to_completion(
    settings: Settings, db: asyncpg.Connection, sync_redis: redis.Redis, dataset: str
) -> None:
    job_id = await submit(settings, db, small_config(epochs=3))
    async with burst_worker(settings):
        pass
    events = events_of(sync_redis, job_id)
    started = [e for e in events if isinstance(e, JobStarted)]
    epochs = [e for e in events if isinstance(e, EpochCompleted)]
    done = [e for e in events if isinstance(e, JobCompleted)]
    assert len(started) == 1 and len(done) == 1, [type(e).__name__ for e in events]
    assert isinstance(events[0], JobStarted) and isinstance(events[-1], JobCompleted)
    start = started[0]
    assert (start.dataset_size, start.num_classes, start.device) == (84, 7, "cpu")
    assert start.train_samples + start.val_samples + start.test_samples == 84
    assert start.total_batches == -(-start.train_samples // 16)
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert epochs[-1].train_loss < epochs[0].train_loss
    points = [(p.epoch, p.batch) for e in events if isinstance(e, BatchProgress) for p in e.points]
    assert points == [(ep, b) for ep in (1, 2, 3) for b in range(1, start.total_batches + 1)]
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert {e.kind for e in saved} == {"best", "last"}
    result = done[0]
    assert result.epochs_run == 3 and not result.stopped_early
    assert result.onnx_max_abs_diff is not None and result.onnx_max_abs_diff < 2e-3
    out = settings.artifacts_dir / job_id
    # The job's tracker writes the evaluations beside them, as it reads them (tracking/export.py).
    assert {p.name for p in out.iterdir()} - {"evaluation"} == {"best.pt", "last.pt", "model.onnx"}
    assert result.checkpoint_path == str(out / "best.pt")
    assert result.onnx_model_path == str(out / "model.onnx")


async def test_job_cancelled_while_queued_never_starts(
    settings: Settings,
    db: asyncpg.Connection,
    redis_client: aredis.Redis,
    sync_redis: redis.Redis,
    dataset: str,
) -> None:
    job_id = await submit(settings, db, small_config(epochs=50))
    await send_command(redis_client, CancelJob(job_id=job_id))
    already = await submit(settings, db, small_config(epochs=50))
    await send_command(redis_client, CancelJob(job_id=already))
    await db.execute("UPDATE training_jobs SET status='cancelled' WHERE id=$1", uuid.UUID(already))
    started = time.monotonic()
    async with burst_worker(settings):
        pass
    assert time.monotonic() - started < 2.0
    events = events_of(sync_redis, job_id)
    assert [type(e) for e in events] == [JobCancelled]
    assert events_of(sync_redis, already) == []
    assert not (settings.artifacts_dir / job_id).exists()


@pytest.mark.parametrize("command", ["cancel", "delete"])
async def test_cancel_mid_training_stops_within_two_seconds(
    settings: Settings,
    db: asyncpg.Connection,
    redis_client: aredis.Redis,
    sync_redis: redis.Redis,
    dataset: str,
    command: str,
) -> None:
    job_id = await submit(settings, db, small_config(epochs=200, seed=None))

    def seen(kind: type, n: int = 1) -> Callable[[], bool]:
        return lambda: sum(isinstance(e, kind) for e in events_of(sync_redis, job_id)) >= n

    async with burst_worker(settings) as task:
        await wait_for(seen(CheckpointSaved), timeout=60, what="the first checkpoint")
        await wait_for(seen(BatchProgress, 3), timeout=30, what="batches of the second epoch")
        sent = time.monotonic()
        cmd = CancelJob(job_id=job_id) if command == "cancel" else DeleteJob(job_id=job_id)
        await send_command(redis_client, cmd)
        await wait_for(seen(JobCancelled), timeout=5, what="JobCancelled")
        stopped = time.monotonic()
        assert stopped - sent < 2.0
        await asyncio.wait_for(asyncio.shield(task), 10)
    events = events_of(sync_redis, job_id)
    assert isinstance(events[-1], JobCancelled)
    assert not any(isinstance(e, JobCompleted | JobFailed) for e in events)
    assert sum(isinstance(e, EpochCompleted) for e in events) < 200
    out = settings.artifacts_dir / job_id
    assert out.exists() == (command == "cancel")


async def test_two_devices_train_with_ddp_on_cpu(
    settings: Settings, db: asyncpg.Connection, sync_redis: redis.Redis, dataset: str
) -> None:
    job_id = await submit(settings, db, small_config(epochs=2, devices=2))
    async with burst_worker(settings):
        pass
    events = events_of(sync_redis, job_id)
    start = next(e for e in events if isinstance(e, JobStarted))
    assert start.device == "cpu x2"
    per_rank = -(-start.train_samples // 2)
    assert start.total_batches == -(-per_rank // 16)
    assert [e.epoch for e in events if isinstance(e, EpochCompleted)] == [1, 2]
    assert isinstance(events[-1], JobCompleted), events[-1]


async def test_failures_are_reported_and_unrunnable_jobs_left_queued(
    settings: Settings, db: asyncpg.Connection, sync_redis: redis.Redis, dataset: str
) -> None:
    gpu = await submit(settings, db, small_config(accelerator="gpu"))
    weights = await submit(settings, db, small_config(pretrained=True))
    empty = await submit(settings, db, small_config(dataset="nothing-here"))
    started = time.monotonic()
    # A burst worker stops once the queue holds nothing it can run.
    async with burst_worker(settings):
        pass
    assert time.monotonic() - started < 60
    events = events_of(sync_redis, empty)
    assert isinstance(events[-1], JobFailed), events
    for word in ["no recordings", "nothing-here"]:
        assert word in events[-1].error_message, events[-1].error_message
    # This CPU worker cannot run a GPU job, nor load ImageNet weights offline: it leaves both
    # in the queue, untouched, for a worker that can (see test_workers.py).
    cached = probe("test:0", 1)
    left = [gpu] if cached.can_load_weights("convnext_atto") else [gpu, weights]
    for job_id in left:
        assert events_of(sync_redis, job_id) == []
    assert sync_redis.zcard(keys.ARQ_QUEUE) == len(left)


async def test_worker_stops_training_on_sigint(
    settings: Settings, db: asyncpg.Connection, sync_redis: redis.Redis, dataset: str
) -> None:
    """`heimdall worker` runs `run_worker(settings)`; Ctrl-C leaves no training process behind."""
    import os
    import signal
    import sys

    import psutil

    job_id = await submit(settings, db, small_config(epochs=200))
    env = {
        **os.environ,
        "HEIMDALL_REDIS_URL": settings.redis_url or "",
        "HEIMDALL_DATABASE_URL": settings.database_url or "",
        "HEIMDALL_DATA_DIR": str(settings.data_dir),
    }
    code = (
        "import asyncio; from shared.settings import Settings;"
        " from services.worker.app import run_worker;"
        " asyncio.run(run_worker(Settings.from_env()))"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env)
    try:
        await wait_for(
            lambda: any(isinstance(e, BatchProgress) for e in events_of(sync_redis, job_id)),
            timeout=90,
            what="training to start",
        )
        family = psutil.Process(proc.pid).children(recursive=True)
        assert family, "the training process should be a descendant of the worker"
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    _, alive = psutil.wait_procs(family, timeout=5)

    def running(p: psutil.Process) -> bool:
        # An exited child whose parent is gone may linger as a zombie until init reaps it.
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    assert not [p for p in alive if running(p)], alive
    events = events_of(sync_redis, job_id)
    assert not any(isinstance(e, JobCompleted | JobFailed | JobCancelled) for e in events)

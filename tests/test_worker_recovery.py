"""Workers that go away mid-training: SIGTERM (a deploy) checkpoints and re-queues the job;
SIGKILL loses the worker, and another one notices the expired lease and resumes the job.

Real `heimdall worker` processes (`python -m services.cli.main worker`), real training
processes, a real recorder; lease TTL shortened to keep the test quick.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import psutil
import pytest
import redis
from support import wait_for
from support.worker import burst_worker, events_of, small_config, submit

from services.recorder.app import run_recorder
from shared import keys
from shared.events import (
    BatchProgress,
    CheckpointSaved,
    EpochCompleted,
    JobCompleted,
    JobRequeued,
    JobStarted,
)
from shared.settings import Settings

pytestmark = [
    pytest.mark.usefixtures("children_one_thread"),
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]

LEASE_TTL_S = 2.0
Process = asyncio.subprocess.Process


@asynccontextmanager
async def workers(settings: Settings, count: int) -> AsyncIterator[list[Process]]:
    """`count` real worker processes; whatever still runs at the end is stopped."""
    env = {
        **os.environ,
        "HEIMDALL_REDIS_URL": settings.redis_url or "",
        "HEIMDALL_DATABASE_URL": settings.database_url or "",
        "HEIMDALL_DATA_DIR": str(settings.data_dir),
        "HEIMDALL_LEASE_TTL_S": str(LEASE_TTL_S),
        "HEIMDALL_PROGRESS_INTERVAL_S": "0.05",
    }
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli.main", "worker", env=env
        )
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def points(events: list[Any]) -> list[tuple[int, int]]:
    return [(p.epoch, p.batch) for e in events if isinstance(e, BatchProgress) for p in e.points]


def assert_complete_once(events: list[Any], epochs: int) -> None:
    """Every epoch and every batch point exactly once, in order, across all attempts."""
    assert isinstance(events[-1], JobCompleted), type(events[-1]).__name__
    assert [e.epoch for e in events if isinstance(e, EpochCompleted)] == list(range(1, epochs + 1))
    seen = points(events)
    per_epoch = next(e for e in events if isinstance(e, JobStarted)).total_batches
    expected = [(e, b) for e in range(1, epochs + 1) for b in range(1, per_epoch + 1)]
    assert seen == expected


def in_epoch(sync_redis: redis.Redis, job_id: str, epoch: int) -> Callable[[], bool]:
    return lambda: any(
        isinstance(e, BatchProgress) and e.epoch >= epoch for e in events_of(sync_redis, job_id)
    )


async def test_sigterm_checkpoints_and_requeues_the_job(
    settings: Settings, db: asyncpg.Connection, sync_redis: redis.Redis, dataset: str
) -> None:
    job_id = await submit(settings, db, small_config(epochs=4))
    async with workers(settings, 1) as (proc,):
        await wait_for(in_epoch(sync_redis, job_id, 2), timeout=90, what="the second epoch")
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0
    events = events_of(sync_redis, job_id)
    assert any(isinstance(e, CheckpointSaved) and e.kind == "pause" for e in events)
    requeued = [e for e in events if isinstance(e, JobRequeued)]
    assert len(requeued) == 1 and "pause checkpoint" in requeued[0].reason
    assert not sync_redis.exists(keys.lease(job_id))
    async with burst_worker(settings):
        pass
    events = events_of(sync_redis, job_id)
    assert_complete_once(events, 4)
    starts = [e.start_epoch for e in events if isinstance(e, JobStarted)]
    assert len(starts) == 2 and starts[0] == 1 and starts[1] >= 2


async def test_sigkill_of_the_training_worker_is_recovered_by_another(
    settings: Settings, db: asyncpg.Connection, sync_redis: redis.Redis, dataset: str
) -> None:
    stop = asyncio.Event()
    recorder = asyncio.create_task(run_recorder(settings, stop=stop))
    try:
        job_id = await submit(settings, db, small_config(epochs=4))
        async with workers(settings, 2) as procs:
            await wait_for(in_epoch(sync_redis, job_id, 2), timeout=120, what="the second epoch")
            owner = sync_redis.get(keys.lease(job_id))
            assert owner is not None
            pid = int(owner.decode().split(":")[1])
            victim = next(p for p in procs if p.pid == pid)
            family = psutil.Process(pid).children(recursive=True)
            killed_at = time.time()
            victim.kill()
            for child in family:
                child.kill()
            await victim.wait()

            def done() -> bool:
                return any(isinstance(e, JobCompleted) for e in events_of(sync_redis, job_id))

            await wait_for(done, timeout=120, what="the job to complete on the other worker")
        events = events_of(sync_redis, job_id)
        assert_complete_once(events, 4)
        requeued = [e for e in events if isinstance(e, JobRequeued)]
        assert len(requeued) == 1 and requeued[0].recoveries == 1
        # Noticed within the lease's TTL and a reaper's sweep (plus scheduling slack).
        assert requeued[0].ts - killed_at < LEASE_TTL_S + 3.0
        started = [e for e in events if isinstance(e, JobStarted)]
        assert len(started) == 2 and started[1].worker != started[0].worker

        async def recorded() -> bool:
            status = await db.fetchval(
                "SELECT status FROM training_jobs WHERE id = $1", uuid.UUID(job_id)
            )
            return bool(status == "completed")

        deadline = time.monotonic() + 30
        while not await recorded():
            assert time.monotonic() < deadline, "the recorder never projected completion"
            await asyncio.sleep(0.05)
        rows = await db.fetch(
            "SELECT epoch, batch FROM training_metrics WHERE training_job_id = $1"
            " AND phase = 'train'",
            uuid.UUID(job_id),
        )
        pairs = [(r["epoch"], r["batch"]) for r in rows]
        assert len(pairs) == len(set(pairs)) == len(points(events))
    finally:
        stop.set()
        await asyncio.wait_for(recorder, 30)

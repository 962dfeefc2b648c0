"""The reaper against real Valkey and PostgreSQL: a job whose lease expired is queued again, a
job lost too often fails with a clear error, and a job whose worker is alive is left alone."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aredis
from arq.connections import ArqRedis, RedisSettings, create_pool

from services.worker.lease import Lease, Reaper
from shared import keys
from shared.config import TrainingConfig
from shared.db import create_pool as create_db_pool
from shared.events import JobFailed, JobRequeued, decode_event
from shared.jobs import insert_job
from shared.settings import Settings


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(
        RedisSettings.from_dsn(settings.redis_url or ""), default_queue_name=keys.ARQ_QUEUE
    )
    yield pool
    await pool.aclose()


async def _running_job(db: asyncpg.Connection) -> str:
    row = await insert_job(db, "lost", TrainingConfig(epochs=3))
    await db.execute("UPDATE training_jobs SET status = 'running' WHERE id = $1", row["id"])
    return str(row["id"])


async def _events(client: aredis.Redis, job_id: str) -> list[object]:
    return [decode_event(f[b"data"]) for _, f in await client.xrange(keys.job_stream(job_id))]


async def test_lost_job_is_requeued_then_failed_after_max_recoveries(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis, queue: ArqRedis
) -> None:
    assert settings.database_url
    pool = await create_db_pool(settings.database_url)
    try:
        reaper = Reaper(
            dataclasses.replace(settings, max_recoveries=1), pool, redis_client, queue, grace_s=0
        )
        lost = await _running_job(db)
        alive = await _running_job(db)
        # The live job's worker holds its lease; the lost one's lease has expired.
        assert await Lease(redis_client, alive, "worker-a", ttl_s=30).acquire()
        await redis_client.hset(keys.ACTIVE_JOBS, lost, "worker-b:1")

        assert await reaper.sweep() == [lost]
        requeued = [e for e in await _events(redis_client, lost) if isinstance(e, JobRequeued)]
        assert len(requeued) == 1 and requeued[0].recoveries == 1
        assert await redis_client.zscore(keys.ARQ_QUEUE, requeued[0].task_id) is not None
        assert await reaper.sweep() == []  # claimed once, not twice

        # Lost again: past max_recoveries the job fails, with a message a person can act on.
        await redis_client.hset(keys.ACTIVE_JOBS, lost, "worker-b:1")
        assert await reaper.sweep() == [lost]
        failed = [e for e in await _events(redis_client, lost) if isinstance(e, JobFailed)]
        assert len(failed) == 1 and "giving up after 1 recoveries" in failed[0].error_message

        assert await _events(redis_client, alive) == []
        assert await redis_client.hexists(keys.ACTIVE_JOBS, alive)
    finally:
        await pool.close()


async def test_finished_job_is_not_recovered(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis, queue: ArqRedis
) -> None:
    assert settings.database_url
    pool = await create_db_pool(settings.database_url)
    try:
        job = await _running_job(db)
        await db.execute("UPDATE training_jobs SET status='completed' WHERE id=$1", uuid.UUID(job))
        await redis_client.hset(keys.ACTIVE_JOBS, job, "worker-b:1")
        await Reaper(settings, pool, redis_client, queue, grace_s=0).sweep()
        assert await _events(redis_client, job) == []
        assert await redis_client.zcard(keys.ARQ_QUEUE) == 0
    finally:
        await pool.close()

"""Who trains a job: a lease in Redis, refreshed by the worker, and reapers that notice when it
is not.

The lease `keys.lease(job)` is the lock: taken with SET NX and a short TTL, refreshed every
second while the job trains, released when the job leaves the worker cleanly (finished, paused,
cancelled, or checkpointed at shutdown). While a worker holds it the job is also in
`keys.ACTIVE_JOBS`. Every worker runs a `Reaper`: a job in that set whose lease has expired lost
its worker (killed, out of memory, machine gone); one reaper claims it, atomically, and queues
it again under a new task id, to resume from its latest checkpoint — or fails it once it has
been recovered `max_recoveries` times.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio as aredis
import structlog
from redis.exceptions import RedisError

from shared import keys
from shared.emit import AsyncEmitter
from shared.events import JobFailed, JobRequeued
from shared.jobs import fetch_job
from shared.settings import Settings
from shared.status import TERMINAL, JobStatus

log = structlog.get_logger(__name__)

ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SADD', KEYS[2], ARGV[3])
  return 1
end
return 0
"""

REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

CLAIM_LOST = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


def refresh_interval(ttl_s: float) -> float:
    """Every second, or faster for a TTL shorter than three seconds."""
    return min(1.0, ttl_s / 3)


class Lease:
    """One worker's lease on one job."""

    def __init__(self, client: aredis.Redis, job_id: str, owner: str, ttl_s: float) -> None:
        self._client = client
        self.job_id = job_id
        self.token = f"{owner}:{uuid.uuid4().hex[:8]}"
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._keys = [keys.lease(job_id), keys.ACTIVE_JOBS]

    async def acquire(self) -> bool:
        script = self._client.register_script(ACQUIRE)
        return bool(await script(keys=self._keys, args=[self.token, self._ttl_ms, self.job_id]))

    async def acquire_within(self, timeout_s: float, poll_s: float = 0.2) -> bool:
        """Wait for a lease another worker is just letting go of (a pause finishing)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await self.acquire():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(poll_s)
        return True

    async def refresh(self) -> bool:
        """False when the lease is no longer ours (it expired and another worker took it)."""
        script = self._client.register_script(REFRESH)
        return bool(await script(keys=self._keys[:1], args=[self.token, self._ttl_ms]))

    async def release(self) -> None:
        script = self._client.register_script(RELEASE)
        await script(keys=self._keys, args=[self.token, self.job_id])

    async def keep_alive(self, lost: asyncio.Event) -> None:
        """Refresh the lease until cancelled; sets `lost` (and stops) once it is not ours."""
        interval = refresh_interval(self._ttl_ms / 1000)
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.refresh():
                    lost.set()
                    return
            except (RedisError, OSError) as exc:
                # Redis itself may be back before the TTL runs out; if not, a reaper decides.
                log.warning("lease refresh failed; retrying", error=str(exc))


class Reaper:
    """Finds jobs whose worker was lost and queues them again (one reaper per worker)."""

    def __init__(self, settings: Settings, pool: Any, client: aredis.Redis, queue: Any) -> None:
        """`queue` is arq's pool (it has `enqueue_job`)."""
        self.settings = settings
        self._pool = pool
        self._client = client
        self._queue = queue
        self._emitter = AsyncEmitter(client, settings.job_stream_maxlen)
        self.interval_s = refresh_interval(settings.lease_ttl_s)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except (RedisError, OSError) as exc:
                log.warning("reaper: store unavailable; retrying", error=str(exc))
            await asyncio.sleep(self.interval_s)

    async def sweep(self) -> list[str]:
        """Recover every active job without a lease; returns their ids."""
        script = self._client.register_script(CLAIM_LOST)
        recovered = []
        for raw in await self._client.smembers(keys.ACTIVE_JOBS):  # type: ignore[misc]
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if await script(keys=[keys.ACTIVE_JOBS, keys.lease(job_id)], args=[job_id]):
                await self._recover(job_id)
                recovered.append(job_id)
        return recovered

    async def _recover(self, job_id: str) -> None:
        async with self._pool.acquire() as conn:
            row = await fetch_job(conn, job_id)
        if row is None or JobStatus(row["status"]) in TERMINAL:
            return
        ttl = self.settings.lease_ttl_s
        count = int(await self._client.incr(keys.recoveries(job_id)))
        await self._client.expire(keys.recoveries(job_id), 30 * 24 * 3600)
        if count > self.settings.max_recoveries:
            message = (
                f"the worker training this job was lost {count} times (no heartbeat for"
                f" {ttl:g} s); giving up after {self.settings.max_recoveries} recoveries."
                " Check the workers' logs (out of memory? killed?) and submit the job again."
            )
            log.error("job lost too often; failed", job_id=job_id, recoveries=count)
            await self._emitter.emit(JobFailed(job_id=job_id, error_message=message))
            return
        task_id = str(uuid.uuid4())
        reason = f"worker lost (no heartbeat for {ttl:g} s); resuming from the last checkpoint"
        await self._emitter.emit(
            JobRequeued(job_id=job_id, reason=reason, task_id=task_id, recoveries=count)
        )
        await self._queue.enqueue_job("train_job", job_id, _job_id=task_id)
        log.warning("lost job queued again", job_id=job_id, task_id=task_id, recoveries=count)

"""Who trains a job: a lease in Redis, refreshed by the worker, and reapers that notice when it
is not.

The lease `keys.lease(job)` is the lock: taken with SET NX and a short TTL, refreshed every
second while the job trains, released when the job leaves the worker cleanly (finished, paused,
cancelled, or checkpointed at shutdown). While a worker holds it the job is also in the hash
`keys.ACTIVE_JOBS` (job → worker name).

A lease also expires when Redis itself stalls for longer than its TTL: Redis's clock runs on
while nobody can reach it. That is not a lost worker, so a worker whose lease vanished while
nobody else took it re-asserts it at its next refresh, and a reaper only judges a job lost when
its lease has stayed missing for another whole TTL during which Redis answered the reaper
promptly (any live worker has re-asserted by then). A job so judged lost its worker (killed,
out of memory, machine gone); one reaper claims it, atomically, and queues it again under a new
task id, to resume from its latest checkpoint — or fails it once it has been recovered
`max_recoveries` times. Every script here refuses to touch a deleted job (see shared/deletion).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio as aredis
import structlog
from redis.exceptions import RedisError

from shared import job_state, keys
from shared.aio import raise_if_cancelling
from shared.emit import AsyncEmitter
from shared.events import JobFailed, JobRequeued
from shared.jobs import fetch_job
from shared.settings import Settings
from shared.status import TERMINAL

log = structlog.get_logger(__name__)

DELETED, TAKEN, HELD, REASSERTED = -1, 0, 1, 2
"""Replies of the lease scripts."""

ACQUIRE = """
if redis.call('ZSCORE', KEYS[3], ARGV[3]) then return -1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  return 1
end
return 0
"""

REFRESH = """
if redis.call('ZSCORE', KEYS[3], ARGV[3]) then return -1 end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  return 2
end
return 0
"""
"""Refresh our lease; re-assert it when it expired (a Redis stall) and nobody took it."""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

CLAIM_LOST = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return owner
end
return false
"""

COUNT_RECOVERY = """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return -1 end
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return count
"""


def refresh_interval(ttl_s: float) -> float:
    """Every second, or faster for a TTL shorter than three seconds."""
    return min(1.0, ttl_s / 3)


class Lease:
    """One worker's lease on one job."""

    def __init__(self, client: aredis.Redis, job_id: str, owner: str, ttl_s: float) -> None:
        self._client = client
        self.job_id = job_id
        self.owner = owner
        self.token = f"{owner}:{uuid.uuid4().hex[:8]}"
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._keys = [keys.lease(job_id), keys.ACTIVE_JOBS, keys.DELETED_JOBS]
        self.deleted = False
        """The job was deleted while we held it (set together with `lost`)."""

    def _args(self) -> list[Any]:
        return [self.token, self._ttl_ms, self.job_id, self.owner]

    async def acquire(self) -> bool:
        script = self._client.register_script(ACQUIRE)
        reply = int(await script(keys=self._keys, args=self._args()))
        self.deleted = reply == DELETED
        return reply == HELD

    async def acquire_within(self, timeout_s: float, poll_s: float = 0.2) -> bool:
        """Wait for a lease another worker is just letting go of (a pause finishing)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await self.acquire():
            if self.deleted or loop.time() >= deadline:
                return False
            await asyncio.sleep(poll_s)
        return True

    async def refresh(self) -> bool:
        """False when the lease is no longer ours (another worker took it, or the job was
        deleted: then `deleted` is set)."""
        script = self._client.register_script(REFRESH)
        reply = int(await script(keys=self._keys, args=self._args()))
        if reply == REASSERTED:
            log.warning("lease had expired (Redis unreachable?); re-asserted", job_id=self.job_id)
        self.deleted = reply == DELETED
        return reply in (HELD, REASSERTED)

    async def release(self) -> None:
        script = self._client.register_script(RELEASE)
        await script(keys=self._keys[:2], args=[self.token, self.job_id])

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
                # An outage: the lease is re-asserted once Redis answers again.
                log.warning("lease refresh failed; retrying", error=str(exc))
            raise_if_cancelling()  # the job has ended (see shared/aio.py)


class Reaper:
    """Finds jobs whose worker was lost and queues them again (one reaper per worker)."""

    def __init__(
        self,
        settings: Settings,
        pool: Any,
        client: aredis.Redis,
        queue: Any,
        grace_s: float | None = None,
    ) -> None:
        """`queue` is arq's pool (it has `enqueue_job`). `grace_s` (default: the lease TTL):
        how long a lease must stay missing, while Redis answers, before its job counts as
        lost."""
        self.settings = settings
        self._pool = pool
        self._client = client
        self._queue = queue
        self._emitter = AsyncEmitter(client, settings.job_stream_maxlen)
        self.interval_s = refresh_interval(settings.lease_ttl_s)
        self.grace_s = settings.lease_ttl_s if grace_s is None else grace_s
        self._suspects: dict[str, float] = {}
        """job id → when its lease was first seen missing (while Redis answered promptly)."""

    async def run_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except (RedisError, OSError) as exc:
                self._suspects.clear()
                log.warning("reaper: store unavailable; retrying", error=str(exc))
            raise_if_cancelling()
            await asyncio.sleep(self.interval_s)

    async def _missing_leases(self) -> dict[str, str] | None:
        """Active jobs without a lease (job → worker), or None when Redis answered too slowly
        to judge (a stall: leases may have expired under live workers)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        owners = await self._client.hgetall(keys.ACTIVE_JOBS)  # type: ignore[misc]
        jobs = {_text(job): _text(owner) for job, owner in owners.items()}
        held = await self._client.mget([keys.lease(j) for j in jobs]) if jobs else []
        if loop.time() - started > self.interval_s:
            return None
        return {
            job: owner
            for (job, owner), lease in zip(jobs.items(), held, strict=True)
            if lease is None
        }

    async def sweep(self) -> list[str]:
        """Recover every active job whose lease has been missing for `grace_s`; returns their
        ids."""
        missing = await self._missing_leases()
        if missing is None:
            self._suspects.clear()
            log.warning("reaper: Redis answers slowly; leases not judged")
            return []
        now = asyncio.get_running_loop().time()
        for job_id in list(self._suspects):
            if job_id not in missing:
                del self._suspects[job_id]
        script = self._client.register_script(CLAIM_LOST)
        recovered = []
        for job_id in missing:
            if now - self._suspects.setdefault(job_id, now) < self.grace_s:
                continue
            del self._suspects[job_id]
            owner = await script(keys=[keys.ACTIVE_JOBS, keys.lease(job_id)], args=[job_id])
            if owner is not None:
                await self._recover(job_id, _text(owner))
                recovered.append(job_id)
        return recovered

    async def _recover(self, job_id: str, worker: str) -> None:
        async with self._pool.acquire() as conn:
            row = await fetch_job(conn, job_id)
        if row is None:
            return
        if (await job_state.current(self._client, row, strict=True))["status"] in TERMINAL:
            return
        silent = self.settings.lease_ttl_s + self.grace_s
        script = self._client.register_script(COUNT_RECOVERY)
        count = int(
            await script(
                keys=[keys.recoveries(job_id), keys.DELETED_JOBS], args=[job_id, 30 * 24 * 3600]
            )
        )
        if count < 0:
            return  # deleted meanwhile
        lost = (
            f"worker {worker} stopped renewing the job's lease (nothing for over {silent:g} s"
            " while Redis answered: killed, out of memory, or its machine went away)"
        )
        if count > self.settings.max_recoveries:
            message = (
                f"the job's worker was lost {count} times, last: {lost}; giving up after"
                f" {self.settings.max_recoveries} recoveries. Check that worker's log and"
                " submit the job again."
            )
            log.error("job lost too often; failed", job_id=job_id, worker=worker, recoveries=count)
            await self._emitter.emit(JobFailed(job_id=job_id, error_message=message))
            return
        task_id = str(uuid.uuid4())
        reason = f"{lost}; resuming from the last checkpoint"
        if await self._emitter.emit(
            JobRequeued(job_id=job_id, reason=reason, task_id=task_id, recoveries=count)
        ):
            await self._queue.enqueue_job("train_job", job_id, _job_id=task_id)
            log.warning(
                "lost job queued again",
                job_id=job_id,
                worker=worker,
                task_id=task_id,
                recoveries=count,
            )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

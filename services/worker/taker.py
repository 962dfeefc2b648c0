"""arq's Worker, taking only the jobs this worker can run.

arq hands a worker every queued task it reads; a CPU worker would take a GPU job and fail it.
`CapableWorker` looks at each queued task's config first (the job id from arq's task, the
config from the job's row, both cached per task) and leaves the ones it cannot run in the queue,
untouched, for a worker that can (`shared.capabilities.refusal`). A burst worker stops when the
queue holds nothing else.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import msgspec
import structlog
from arq.constants import job_key_prefix
from arq.jobs import DeserializationError, deserialize_job
from arq.worker import Worker
from redis.exceptions import RedisError

from shared.capabilities import Refusal, WorkerInfo, refusal
from shared.jobs import job_config

log = structlog.get_logger(__name__)


class CapableWorker(Worker):
    """A Worker whose `ctx["presence"]` (set at start-up) says what it can run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._verdicts: dict[str, str | None] = {}
        """Task id → why this worker cannot run it (None: it can, or the job is unknown)."""

    def _info(self) -> WorkerInfo | None:
        presence = self.ctx.get("presence")
        return presence.info if presence is not None else None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        info = self._info()
        if info is None or not job_ids:
            await super().start_jobs(job_ids)
            return
        try:
            await self._judge([i.decode() for i in job_ids], info)
        except (RedisError, OSError, asyncpg.PostgresError) as exc:
            log.warning("queued jobs not judged; none taken this time", error=str(exc))
            return
        ids = [i.decode() for i in job_ids]
        self._verdicts = {i: self._verdicts[i] for i in ids if i in self._verdicts}
        runnable = [i for i in job_ids if self._verdicts.get(i.decode()) is None]
        left = len(job_ids) - len(runnable)
        if self.burst and not runnable and self.job_counter == 0:
            if left and left == await self.pool.zcard(self.queue_name):
                # Nothing in the queue is ours to run: a burst worker is done (a limit of 0
                # more jobs makes arq's burst loop stop).
                self.max_burst_jobs = 0
        await super().start_jobs(runnable)

    async def _judge(self, task_ids: list[str], info: WorkerInfo) -> None:
        """Fill `_verdicts` for the tasks not judged yet."""
        new = [t for t in task_ids if t not in self._verdicts]
        if not new:
            return
        raw = await self.pool.mget([job_key_prefix + t for t in new])
        job_of: dict[str, str] = {}
        for task_id, data in zip(new, raw, strict=True):
            job_id = _job_id(data)
            if job_id is None:
                self._verdicts[task_id] = None  # arq reports what it cannot read
            else:
                job_of[task_id] = job_id
        pool: asyncpg.Pool = self.ctx["db_pool"]
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, config FROM training_jobs WHERE id = ANY($1::uuid[])",
                [uuid.UUID(j) for j in job_of.values()],
            )
        configs = {str(r["id"]): r for r in rows}
        for task_id, job_id in job_of.items():
            why = _refusal(info, configs.get(job_id))
            self._verdicts[task_id] = why.reason if why else None
            if why is not None:
                log.info(
                    "job left in the queue for a worker that can run it",
                    job_id=job_id,
                    field=why.field,
                    reason=why.reason,
                )


def _refusal(info: WorkerInfo, row: Any) -> Refusal | None:
    """Why `info` cannot run the job of `row`; None also for a job it cannot judge (deleted,
    or a config of another schema): the runner reports those."""
    if row is None:
        return None
    try:
        config = job_config(row)
    except msgspec.ValidationError:
        return None
    return refusal(info, config)


def _job_id(data: bytes | None) -> str | None:
    """The job id argument of an arq task `train_job(job_id)`, or None."""
    if data is None:
        return None
    try:
        args = deserialize_job(data).args
    except DeserializationError:
        return None
    if not args or not isinstance(args[0], str):
        return None
    try:
        return str(uuid.UUID(args[0]))
    except ValueError:
        return None

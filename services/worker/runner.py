"""One job, from the queue to its final event: checks, the training process, cancellation.

The worker never writes job rows: it reads the job and its recordings, and reports everything
as events (the recorder projects them into the database).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from typing import Any

import asyncpg
import redis.asyncio as aredis
import structlog

from services.tracking import JobTrackers, delete_tracking
from services.worker.checkpoint import BEST
from services.worker.data import check_recordings, job_recordings, resolve_seed
from services.worker.errors import WorkerError
from services.worker.hardware import check_accelerator
from services.worker.listener import CommandListener, Watch
from services.worker.process import Payload, TrainingRun
from shared import keys
from shared.commands import DeleteJob
from shared.emit import AsyncEmitter
from shared.events import Event, JobCancelled, JobFailed
from shared.jobs import fetch_job, job_config
from shared.settings import Settings
from shared.status import TERMINAL, JobStatus

log = structlog.get_logger(__name__)

FLAG_POLL_S = 0.5
"""How often a running job re-reads its cancel flag, in case a command was missed."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobRunner:
    """Runs jobs handed over by arq; owns nothing but borrows the pool, client and listener."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        client: aredis.Redis,
        listener: CommandListener,
        trackers: JobTrackers | None = None,
    ) -> None:
        self.settings = settings
        self._pool = pool
        self._client = client
        self._listener = listener
        self._emitter = AsyncEmitter(client, settings.job_stream_maxlen)
        self._trackers = trackers
        self.name = worker_name()

    async def _emit(self, event: Event) -> None:
        await self._emitter.emit(event)

    async def run(self, job_id: str, attempt: int = 1) -> str:
        """Run one job to its end; returns the outcome (`completed`, `failed`, `cancelled`,
        `skipped`). Never raises for a job's own failure: that becomes a JobFailed event."""
        with structlog.contextvars.bound_contextvars(job_id=job_id):
            watch = self._listener.watch(job_id)
            try:
                return await self._run(job_id, attempt, watch)
            finally:
                self._listener.unwatch(job_id)
                if self._trackers is not None:
                    self._trackers.release(job_id)

    async def _run(self, job_id: str, attempt: int, watch: Watch) -> str:
        async with self._pool.acquire() as conn:
            row = await fetch_job(conn, job_id)
            if row is None:
                log.warning("job not found; skipped")
                return "skipped"
            if JobStatus(row["status"]) in TERMINAL:
                log.info("job already finished; skipped", status=row["status"])
                return "skipped"
            flag = await self._cancel_flag(job_id)
            if flag is not None:
                await self._cancelled(job_id, flag == DeleteJob.__struct_config__.tag, None)
                return "cancelled"
            try:
                config = job_config(row)
                check_accelerator(config)
                recordings = await job_recordings(conn, config)
                check_recordings(recordings, config)
            except WorkerError as exc:
                log.warning("job cannot run", error=str(exc))
                await self._emit(JobFailed(job_id=job_id, error_message=str(exc)))
                return "failed"
        payload = Payload(
            job_id=job_id,
            config=config,
            recordings=recordings,
            out_dir=self.settings.artifacts_dir / job_id,
            redis_url=self._redis_url(),
            worker=self.name,
            attempt=attempt,
            progress_interval_s=self.settings.progress_interval_s,
            job_stream_maxlen=self.settings.job_stream_maxlen,
            seed=resolve_seed(config),
            log_level=self.settings.log_level,
            log_json=self.settings.log_json,
        )
        run = TrainingRun(payload)
        if self._trackers is not None:
            self._trackers.start(job_id, config.to_dict())
        try:
            run.start()
            log.info(
                "training process started",
                devices=config.devices,
                attempt=attempt,
                seed=payload.seed,
            )
            return await self._supervise(job_id, run, watch)
        finally:
            # Worker shutdown (arq cancels this coroutine) or any error: nothing outlives us.
            if run.alive:
                await asyncio.shield(run.stop_within(self.settings.cancel_grace_s))
            run.close()

    def _redis_url(self) -> str:
        assert self.settings.redis_url, "the worker needs settings.redis_url"
        return self.settings.redis_url

    async def _cancel_flag(self, job_id: str) -> str | None:
        value = await self._client.get(keys.cancel_flag(job_id))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def _supervise(self, job_id: str, run: TrainingRun, watch: Watch) -> str:
        next_flag_check = time.monotonic() + FLAG_POLL_S
        while run.alive and not run.failed():
            if watch.stop_requested.is_set():
                return await self._cancel(job_id, run, isinstance(watch.command, DeleteJob), watch)
            if time.monotonic() >= next_flag_check:
                flag = await self._cancel_flag(job_id)
                if flag is not None:
                    delete = flag == DeleteJob.__struct_config__.tag
                    return await self._cancel(job_id, run, delete, watch)
                next_flag_check = time.monotonic() + FLAG_POLL_S
            try:
                await asyncio.wait_for(watch.stop_requested.wait(), timeout=0.05)
            except TimeoutError:
                pass
        if run.failed():
            # A crashed rank may leave the others waiting in a collective.
            await run.stop_within(self.settings.cancel_grace_s)
        await run.wait()
        codes = run.exitcodes
        if run.claim():
            # The trainer reported nothing final: it died (killed, out of memory, segfault).
            message = f"training process exited unexpectedly (exit codes {codes})"
            log.error("training process died", exitcodes=codes)
            await self._emit(JobFailed(job_id=job_id, error_message=message))
            return "failed"
        ok = all(code == 0 for code in codes) and (run.payload.out_dir / BEST).exists()
        log.info("training process finished", exitcodes=codes)
        return "completed" if ok else "failed"

    async def _cancel(self, job_id: str, run: TrainingRun, delete: bool, watch: Watch) -> str:
        started = time.monotonic()
        mine = run.claim()
        await run.stop_within(self.settings.cancel_grace_s)
        if not mine:
            # The trainer had already claimed the final event (completed or failed).
            if delete:
                self._remove_artifacts(job_id)
            return "finished before cancel"
        reason = getattr(watch.command, "reason", None)
        await self._cancelled(job_id, delete, reason)
        log.info("training stopped", seconds=round(time.monotonic() - started, 3))
        return "cancelled"

    async def _cancelled(self, job_id: str, delete: bool, reason: str | None) -> None:
        if delete:
            self._remove_artifacts(job_id)
        text = reason or ("deleted by user" if delete else "cancelled by user")
        await self._emit(JobCancelled(job_id=job_id, reason=text))

    def _remove_artifacts(self, job_id: str) -> None:
        path = self.settings.artifacts_dir / job_id
        shutil.rmtree(path, ignore_errors=True)
        delete_tracking(self.settings, job_id)
        log.info("artifacts removed", path=str(path))


async def train_job(ctx: dict[str, Any], job_id: str) -> str:
    """The arq task the API enqueues: `enqueue_job("train_job", job_id, ...)`."""
    runner: JobRunner = ctx["runner"]
    return await runner.run(job_id, attempt=int(ctx.get("job_try") or 1))

"""One job, from the queue to its final event: checks, the lease, staging, the training
process and letting go of the job (its supervision while it trains: `supervise.py`).

The worker never writes job rows: it reads the job and its recordings, and reports everything
as events (the recorder projects them into the database). A job trains only under its lease
(see `lease.py`), so two queue entries of one job (a resume, a recovery, arq's own retry) never
train it at once; each run continues from the job's latest resumable checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aredis
import structlog
from redis.exceptions import RedisError

from services.tracking import JobTrackers, delete_tracking
from services.worker.data import check_recordings, job_recordings, resolve_seed
from services.worker.errors import WorkerError
from services.worker.hardware import check_accelerator, train_threads
from services.worker.lease import Lease
from services.worker.listener import CommandListener, Watch
from services.worker.process import Payload, TrainingRun
from services.worker.run import TrainSpec
from services.worker.staging import Staging
from services.worker.supervise import LeaseLost, Supervisor, cancel_flag
from shared import job_state, keys
from shared.commands import DeleteJob
from shared.config import TrainingConfig
from shared.datasets import Recording
from shared.deletion import is_deleted
from shared.emit import AsyncEmitter
from shared.errors import HeimdallError
from shared.events import (
    BatchProgress,
    EpochCompleted,
    Event,
    JobFailed,
    JobPaused,
    decode_event,
)
from shared.jobs import fetch_job, job_config
from shared.redis_clients import url_with_timeouts
from shared.settings import Settings
from shared.status import TERMINAL
from shared.storage import BlobStore

log = structlog.get_logger(__name__)

TAIL_SCAN = 2000
"""How many of a job's newest events are read to find what an earlier attempt emitted."""

EMIT_RETRY_S = 30.0
"""The worker's own events (cancelled, failed, re-queued) outlast a Redis outage this long."""

TRACKER_WAIT_S = 5.0
"""After a delete, how long the job's tracker may take to close its files before they go."""


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
        store: BlobStore | None = None,
    ) -> None:
        """`store`: the worker's blob store, shared with its trackers (default: the settings')."""
        self.settings = settings
        self._pool = pool
        self._client = client
        self._listener = listener
        self._emitter = AsyncEmitter(client, settings.job_stream_maxlen, retry_s=EMIT_RETRY_S)
        self._trackers = trackers
        self._staging = Staging(settings, store)
        self._supervisor = Supervisor(settings, client, self._emitter)
        self.name = worker_name()
        self.running: set[str] = set()
        """Ids of the jobs this worker has taken and not yet let go (its heartbeat says)."""

    async def _emit(self, event: Event) -> None:
        await self._emitter.emit(event)

    async def run(self, job_id: str, attempt: int = 1) -> str:
        """Run one job to its end; returns the outcome (`completed`, `failed`, `cancelled`,
        `skipped`). Never raises for a job's own failure: that becomes a JobFailed event."""
        with structlog.contextvars.bound_contextvars(job_id=job_id):
            watch = self._listener.watch(job_id)
            self.running.add(job_id)
            try:
                return await self._run(job_id, attempt, watch)
            finally:
                self.running.discard(job_id)
                self._listener.unwatch(job_id)
                told = isinstance(watch.command, DeleteJob)
                await asyncio.shield(self._let_go(job_id, told=told))

    async def _let_go(self, job_id: str, *, told: bool = False) -> None:
        """The job leaves this worker. A deleted one (marked so in Redis, or `told` by a
        delete command) takes its files along, once its tracker (which may still be
        flushing) has closed them."""
        try:
            deleted = told or await is_deleted(self._client, job_id)
        except (RedisError, OSError) as exc:
            log.warning("cannot tell whether the job was deleted", error=str(exc))
            deleted = False
        if self._trackers is not None:
            if not deleted:
                self._trackers.release(job_id)
            else:
                self._trackers.release(job_id, grace_s=0.0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TRACKER_WAIT_S):
                        await self._trackers.wait(job_id)
        if deleted:
            self._remove_artifacts(job_id)

    async def _may_run(self, job_id: str) -> Any:
        """The job's row, or None when it must not run: deleted, or already finished (its final
        state is claimed before the recorder shows it)."""
        async with self._pool.acquire() as conn:
            row = await fetch_job(conn, job_id)
        if row is None:
            log.warning("job not found; skipped")
            return None
        status = (await job_state.current(self._client, row, strict=True))["status"]
        if status in TERMINAL:
            log.info("job already finished; skipped", status=status)
            return None
        return row

    async def _run(self, job_id: str, attempt: int, watch: Watch) -> str:
        if await self._may_run(job_id) is None:
            return "skipped"
        flag = await cancel_flag(self._client, job_id)
        if flag is not None:
            await self._supervisor.cancelled(job_id, None)
            return "cancelled"
        lease = Lease(self._client, job_id, self.name, self.settings.lease_ttl_s)
        if not await lease.acquire_within(self.settings.lease_ttl_s + 1.0):
            log.info("job deleted, or another worker holds its lease; skipped")
            return "skipped: deleted" if lease.deleted else "skipped: leased elsewhere"
        lost = asyncio.Event()
        heartbeat = asyncio.create_task(lease.keep_alive(lost), name=f"lease-{job_id[:8]}")
        try:
            # Again under the lease: a delete or a final event may have come meanwhile.
            row = await self._may_run(job_id)
            if row is None:
                return "skipped"
            return await self._leased(job_id, attempt, watch, lease, lost, row)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            await asyncio.shield(lease.release())

    async def _leased(
        self, job_id: str, attempt: int, watch: Watch, lease: Lease, lost: asyncio.Event, row: Any
    ) -> str:
        tail = await self._stream_tail(job_id)
        if await self._client.exists(keys.pause_flag(job_id)):
            log.info("job paused before it started")
            await self._emit(JobPaused(job_id=job_id))
            return "paused"
        async with self._pool.acquire() as conn:
            try:
                config = job_config(row)
                check_accelerator(config)
                recordings = await job_recordings(conn, config)
                check_recordings(recordings, config)
            except WorkerError as exc:
                return await self._cannot_run(job_id, exc)
        out_dir = self.settings.artifacts_dir / job_id
        with self._staging.holding(config):
            try:
                recordings = await self._staging.stage(job_id, config, recordings, out_dir)
            except WorkerError as exc:
                return await self._cannot_run(job_id, exc)
            return await self._train(job_id, attempt, watch, lease, lost, config, recordings, tail)

    async def _cannot_run(self, job_id: str, exc: WorkerError) -> str:
        log.warning("job cannot run", error=str(exc))
        await self._emit(JobFailed(job_id=job_id, error_message=str(exc)))
        return "failed"

    async def _train(
        self,
        job_id: str,
        attempt: int,
        watch: Watch,
        lease: Lease,
        lost: asyncio.Event,
        config: TrainingConfig,
        recordings: list[Recording],
        tail: StreamTail,
    ) -> str:
        spec = TrainSpec(
            job_id=job_id,
            config=config,
            recordings=recordings,
            out_dir=self.settings.artifacts_dir / job_id,
            storage=self._staging.storage,
            worker=self.name,
            attempt=attempt,
            progress_interval_s=self.settings.progress_interval_s,
            seed=resolve_seed(config),
            emitted=tail.point,
            emitted_epochs=tail.epochs,
            threads=train_threads(
                self.settings.train_threads, self.settings.max_jobs, config.devices
            ),
        )
        payload = Payload(
            spec=spec,
            redis_url=url_with_timeouts(self._redis_url(), self.settings.redis_timeout_s),
            job_stream_maxlen=self.settings.job_stream_maxlen,
            log_level=self.settings.log_level,
            log_json=self.settings.log_json,
            worker_pid=os.getpid(),
        )
        run = TrainingRun(payload)
        if self._trackers is not None:
            self._trackers.start(job_id, config.to_dict())
        try:
            # Off the event loop: starting a process may take a while on a busy machine, and the
            # lease's heartbeat must go on meanwhile.
            await asyncio.to_thread(run.start)
            # The seed in use is logged by the trainer: a resumed run keeps its checkpoint's.
            log.info("training process started", devices=config.devices, attempt=attempt)
            try:
                return await self._supervisor.supervise(job_id, run, watch, lease, lost)
            except asyncio.CancelledError:
                # The worker is shutting down (arq cancels its jobs, and runs them again later).
                await asyncio.shield(self._supervisor.suspend(job_id, run))
                raise
            except LeaseLost:
                log.error("lease lost to another worker; training stopped")
                await run.stop_within(self.settings.cancel_grace_s)
                return "lease lost"
        finally:
            # Worker shutdown (arq cancels this coroutine) or any error: nothing outlives us.
            if run.alive:
                await asyncio.shield(run.stop_within(self.settings.cancel_grace_s))
            run.close()

    def _redis_url(self) -> str:
        assert self.settings.redis_url, "the worker needs settings.redis_url"
        return self.settings.redis_url

    async def _stream_tail(self, job_id: str) -> StreamTail:
        """What earlier attempts of the job emitted, from the newest events of its stream."""
        tail = StreamTail()
        entries = await self._client.xrevrange(keys.job_stream(job_id), count=TAIL_SCAN)
        for _id, fields in entries:
            try:
                event = decode_event(fields[b"data"])
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
                continue  # an event of a newer schema: not ours to judge
            if isinstance(event, BatchProgress) and event.points and tail.point == (0, 0):
                tail.point = (event.points[-1].epoch, event.points[-1].batch)
            if isinstance(event, EpochCompleted) and tail.epochs == 0:
                tail.epochs = event.epoch
            if tail.point != (0, 0) and tail.epochs:
                break
        return tail

    def _remove_artifacts(self, job_id: str) -> None:
        path = self.settings.artifacts_dir / job_id
        shutil.rmtree(path, ignore_errors=True)
        try:
            objects = self._staging.remove(job_id)
        except HeimdallError as exc:
            # The API's delete removes them too; a store down now leaves them to it.
            log.warning("stored artifacts not removed", error=exc.detail)
            objects = 0
        delete_tracking(self.settings, job_id)
        log.info("artifacts removed", path=str(path), objects=objects)


class StreamTail:
    """The newest state of a job's event stream, as a run starts."""

    def __init__(self) -> None:
        self.point: tuple[int, int] = (0, 0)
        """(epoch, batch) of the newest batch point emitted."""
        self.epochs = 0
        """The newest EpochCompleted's epoch."""


async def train_job(ctx: dict[str, Any], job_id: str) -> str:
    """The arq task the API enqueues: `enqueue_job("train_job", job_id, ...)`."""
    runner: JobRunner = ctx["runner"]
    return await runner.run(job_id, attempt=int(ctx.get("job_try") or 1))

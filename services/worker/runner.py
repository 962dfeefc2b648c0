"""One job, from the queue to its final event: checks, the lease, the training process,
cancellation, pausing, and checkpointing at shutdown.

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
import time
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aredis
import structlog
from redis.exceptions import RedisError

from services.tracking import JobTrackers, delete_tracking
from services.worker.checkpoint import BEST
from services.worker.data import check_recordings, job_recordings, resolve_seed
from services.worker.errors import WorkerError
from services.worker.hardware import check_accelerator, train_threads
from services.worker.lease import Lease
from services.worker.listener import CommandListener, Watch
from services.worker.preempt import Preempt
from services.worker.process import Payload, TrainingRun
from services.worker.run import TrainSpec
from services.worker.staging import Staging
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
    JobCancelled,
    JobFailed,
    JobPaused,
    JobRequeued,
    decode_event,
)
from shared.jobs import fetch_job, job_config
from shared.redis_clients import url_with_timeouts
from shared.settings import Settings
from shared.status import TERMINAL

log = structlog.get_logger(__name__)

FLAG_POLL_S = 0.5
"""How often a running job re-reads its cancel flag, in case a command was missed."""


TAIL_SCAN = 2000
"""How many of a job's newest events are read to find what an earlier attempt emitted."""

EMIT_RETRY_S = 30.0
"""The worker's own events (cancelled, failed, re-queued) outlast a Redis outage this long."""

TRACKER_WAIT_S = 5.0
"""After a delete, how long the job's tracker may take to close its files before they go."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseLost(Exception):
    """Another worker holds the job's lease now: this one was presumed lost."""


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
        self._emitter = AsyncEmitter(client, settings.job_stream_maxlen, retry_s=EMIT_RETRY_S)
        self._trackers = trackers
        self._staging = Staging(settings)
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
        flag = await self._cancel_flag(job_id)
        if flag is not None:
            await self._cancelled(job_id, None)
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
                return await self._supervise(job_id, run, watch, lease, lost)
            except asyncio.CancelledError:
                # The worker is shutting down (arq cancels its jobs, and runs them again later).
                await asyncio.shield(self._suspend(job_id, run))
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

    async def _cancel_flag(self, job_id: str) -> str | None:
        value = await self._client.get(keys.cancel_flag(job_id))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

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

    async def _suspend(self, job_id: str, run: TrainingRun) -> None:
        """Shutdown: have the trainer checkpoint at its next batch boundary, then leave the job
        to the queue (arq runs a cancelled job again), to resume on another worker."""
        if not run.alive:
            return
        run.hold.value = Preempt.SUSPEND
        grace = self.settings.shutdown_grace_s
        if await run.wait(grace) and run.exitcodes == [Preempt.SUSPEND] * len(run.exitcodes):
            reason = "worker shutting down; the job resumes from its pause checkpoint"
        else:
            await run.stop_within(0.0)
            reason = "worker shutting down; the job resumes from its last epoch checkpoint"
        if run.claim():
            await self._emit(JobRequeued(job_id=job_id, reason=reason))
            log.info("job checkpointed and left to the queue", reason=reason)

    async def _supervise(  # noqa: C901 - the supervision loop; to be split (issue 18)
        self, job_id: str, run: TrainingRun, watch: Watch, lease: Lease, lost: asyncio.Event
    ) -> str:
        next_flag_check = time.monotonic() + FLAG_POLL_S
        while run.alive and not run.failed():
            if watch.stop_requested.is_set():
                return await self._cancel(job_id, run, watch)
            if watch.pause_requested.is_set() and run.hold.value == Preempt.NONE:
                log.info("pause requested")
                run.hold.value = Preempt.PAUSE
            if lost.is_set():
                if lease.deleted:  # the delete command was missed; the lease tells
                    return await self._cancel(job_id, run, watch)
                raise LeaseLost(job_id)
            if time.monotonic() >= next_flag_check:
                if await self._flags_say_cancel(job_id, watch):
                    return await self._cancel(job_id, run, watch)
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
        if codes and codes[0] == Preempt.PAUSE:
            log.info("training paused")
            return "paused"
        if run.claim():
            # The trainer reported nothing final: it died (killed, out of memory, segfault).
            message = f"training process exited unexpectedly (exit codes {codes})"
            log.error("training process died", exitcodes=codes)
            await self._emit(JobFailed(job_id=job_id, error_message=message))
            return "failed"
        ok = all(code == 0 for code in codes) and (run.payload.spec.out_dir / BEST).exists()
        log.info("training process finished", exitcodes=codes)
        return "completed" if ok else "failed"

    async def _flags_say_cancel(self, job_id: str, watch: Watch) -> bool:
        """Re-read the job's cancel and pause flags (in case a command was missed). A Redis that
        does not answer says nothing: training goes on, and the next check asks again."""
        try:
            if await self._cancel_flag(job_id) is not None:
                return True
            if await self._client.exists(keys.pause_flag(job_id)):
                watch.pause_requested.set()
        except (RedisError, OSError) as exc:
            log.warning("cannot read the job's flags; training goes on", error=str(exc))
        return False

    async def _cancel(self, job_id: str, run: TrainingRun, watch: Watch) -> str:
        started = time.monotonic()
        mine = run.claim()
        await run.stop_within(self.settings.cancel_grace_s)
        if not mine:
            # The trainer had already claimed the final event (completed or failed).
            return "finished before cancel"
        reason = getattr(watch.command, "reason", None)
        await self._cancelled(job_id, reason)
        log.info("training stopped", seconds=round(time.monotonic() - started, 3))
        return "cancelled"

    async def _cancelled(self, job_id: str, reason: str | None) -> None:
        """Report the cancellation. The API that cancelled the job has emitted it already (the
        final-state claim keeps this one out); this one is for a cancel the API could not
        report. A deleted job emits nothing at all."""
        await self._emit(JobCancelled(job_id=job_id, reason=reason or "cancelled by user"))

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

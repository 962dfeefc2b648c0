"""Supervising a running training process: what stops or pauses it, and what it came to.

A job's training process is stopped by a cancel or delete command (or, should the command be
missed, the job's cancel flag, re-read every `FLAG_POLL_S`), by the loss of its lease, or by
the worker shutting down (a suspend: checkpoint at the next batch boundary and leave the job to
the queue). A pause command sets the process's hold signal. The outcome goes back to the runner
as a word (`completed`, `failed`, `cancelled`, `paused`...); the final event is emitted here
only when the trainer did not claim one first (see `TrainingRun.claim`).
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aredis
import structlog
from redis.exceptions import RedisError

from services.worker.checkpoint import BEST
from services.worker.lease import Lease
from services.worker.listener import Watch
from services.worker.preempt import Preempt
from services.worker.process import TrainingRun
from shared import keys
from shared.emit import AsyncEmitter
from shared.events import JobCancelled, JobFailed, JobRequeued
from shared.settings import Settings

log = structlog.get_logger(__name__)

FLAG_POLL_S = 0.5
"""How often a running job re-reads its cancel flag, in case a command was missed."""

WAKE_S = 0.05
"""The loop's longest sleep between looks at the pause request, the lease and the process."""


class LeaseLost(Exception):
    """Another worker holds the job's lease now: this one was presumed lost."""


async def cancel_flag(client: aredis.Redis, job_id: str) -> str | None:
    """The job's cancel flag (the command's tag, `cancel` or `delete`), None when unset."""
    value = await client.get(keys.cancel_flag(job_id))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Supervisor:
    """Watches the training processes of one worker; borrows the client and the emitter."""

    def __init__(self, settings: Settings, client: aredis.Redis, emitter: AsyncEmitter) -> None:
        self.settings = settings
        self._client = client
        self._emitter = emitter

    async def supervise(
        self, job_id: str, run: TrainingRun, watch: Watch, lease: Lease, lost: asyncio.Event
    ) -> str:
        """Until the process ends or is stopped; raises LeaseLost when another worker took
        the job."""
        stop = await self._watch(job_id, run, watch, lease, lost)
        if stop:
            return await self.cancel(job_id, run, watch)
        return await self._outcome(job_id, run)

    async def _watch(
        self, job_id: str, run: TrainingRun, watch: Watch, lease: Lease, lost: asyncio.Event
    ) -> bool:
        """While the process runs: True when it must be stopped (cancel or delete)."""
        next_flag_check = time.monotonic() + FLAG_POLL_S
        while run.alive and not run.failed():
            if watch.stop_requested.is_set():
                return True
            if watch.pause_requested.is_set() and run.hold.value == Preempt.NONE:
                log.info("pause requested")
                run.hold.value = Preempt.PAUSE
            if lost.is_set():
                if lease.deleted:  # the delete command was missed; the lease tells
                    return True
                raise LeaseLost(job_id)
            if time.monotonic() >= next_flag_check:
                if await self._flags_say_cancel(job_id, watch):
                    return True
                next_flag_check = time.monotonic() + FLAG_POLL_S
            try:
                await asyncio.wait_for(watch.stop_requested.wait(), timeout=WAKE_S)
            except TimeoutError:
                pass
        return False

    async def _outcome(self, job_id: str, run: TrainingRun) -> str:
        """What the ended process came to; a death the trainer could not report is a JobFailed."""
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
            await self._emitter.emit(JobFailed(job_id=job_id, error_message=message))
            return "failed"
        ok = all(code == 0 for code in codes) and (run.payload.spec.out_dir / BEST).exists()
        log.info("training process finished", exitcodes=codes)
        return "completed" if ok else "failed"

    async def _flags_say_cancel(self, job_id: str, watch: Watch) -> bool:
        """Re-read the job's cancel and pause flags (in case a command was missed). A Redis that
        does not answer says nothing: training goes on, and the next check asks again."""
        try:
            if await cancel_flag(self._client, job_id) is not None:
                return True
            if await self._client.exists(keys.pause_flag(job_id)):
                watch.pause_requested.set()
        except (RedisError, OSError) as exc:
            log.warning("cannot read the job's flags; training goes on", error=str(exc))
        return False

    async def cancel(self, job_id: str, run: TrainingRun, watch: Watch) -> str:
        started = time.monotonic()
        mine = run.claim()
        await run.stop_within(self.settings.cancel_grace_s)
        if not mine:
            # The trainer had already claimed the final event (completed or failed).
            return "finished before cancel"
        reason = getattr(watch.command, "reason", None)
        await self.cancelled(job_id, reason)
        log.info("training stopped", seconds=round(time.monotonic() - started, 3))
        return "cancelled"

    async def cancelled(self, job_id: str, reason: str | None) -> None:
        """Report the cancellation. The API that cancelled the job has emitted it already (the
        final-state claim keeps this one out); this one is for a cancel the API could not
        report. A deleted job emits nothing at all."""
        await self._emitter.emit(JobCancelled(job_id=job_id, reason=reason or "cancelled by user"))

    async def suspend(self, job_id: str, run: TrainingRun) -> None:
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
            await self._emitter.emit(JobRequeued(job_id=job_id, reason=reason))
            log.info("job checkpointed and left to the queue", reason=reason)

"""Training runs in its own process(es), never in the arq coroutine.

Processes start from a clean interpreter, never by forking the event-loop process: through a
`forkserver` that has imported torch, timm and the trainer once (so a job starts in well under
a second instead of re-importing them each time), or with `spawn` where there is no
forkserver. Both are CUDA-safe. The forkserver keeps the environment it started with.

One process per device (`devices > 1` → DistributedDataParallel, see `ddp.py`). The parent
keeps a stop Event (checked by the trainer every batch) and a one-shot *terminal gate*: whoever
claims it first — the trainer finishing or failing, or the parent cancelling — is the only one
allowed to emit the job's final event. So once a cancel has been observed the training process
can never emit JobCompleted, and a job that has completed is never reported as cancelled.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from services.worker.ddp import DistInfo, free_init_method
from services.worker.errors import TrainingCancelled, WorkerError
from services.worker.preempt import Preempt
from services.worker.progress import EventSink
from services.worker.run import TrainSpec

PRELOAD = [
    "torch",
    "timm",
    "torchaudio",
    "torch.onnx",
    "onnxruntime",
    "services.worker.trainer",
    "redis",
    "shared.emit",
]
"""Imported once by the forkserver, inherited by every training process it forks."""

EXIT_FAILED = 1
"""A training process's exit code when training failed (it has emitted JobFailed if it could)."""


class Gate(IntEnum):
    """The terminal gate: who may emit the job's final event (the first claimant only)."""

    OPEN = 0
    TRAINER = 1
    PARENT = 2


@dataclass(frozen=True)
class Payload:
    """What a training process needs: the run itself and how to report; picklable, since it
    crosses a spawn."""

    spec: TrainSpec
    redis_url: str
    job_stream_maxlen: int
    log_level: str = "INFO"
    log_json: bool = False
    worker_pid: int = 0
    """The supervising worker; a training process whose worker is gone stops by itself."""


class OrphanGuard:
    """The stop signal, also set once the supervising worker (or the forkserver in between)
    has died: an orphaned training process must not go on training beside the worker that
    recovers its job."""

    def __init__(self, stop: MpEvent, worker_pid: int) -> None:
        self._stop = stop
        self._pid = worker_pid
        self._parent = os.getppid()

    def is_set(self) -> bool:
        if self._stop.is_set():
            return True
        if os.getppid() != self._parent:
            return True
        if self._pid:
            try:
                os.kill(self._pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return False


def start_context() -> ForkServerContext | SpawnContext:
    """`forkserver` with the training stack preloaded, or `spawn` where it does not exist."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


def warm_up() -> None:
    """Start the forkserver (and its imports) now, so the first job does not wait for it."""
    ctx = start_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def claim(gate: Synchronized[int], who: Gate) -> bool:
    """Claim the right to emit the job's final event; True for the first claimant only."""
    with gate.get_lock():
        if gate.value == Gate.OPEN:
            gate.value = who
            return True
        return False


def error_text(exc: BaseException) -> str:
    """The job's error_message: our own errors and CUDA OOM as written, others with their type."""
    import torch

    if isinstance(exc, WorkerError | torch.OutOfMemoryError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:4000]


def _main(rank: int, info: DistInfo, payload: Payload, stop: MpEvent, gate: Any, hold: Any) -> None:
    """Entry point of one training process; its exit code is a `Preempt` value (0: the run
    ended), or EXIT_FAILED."""
    import redis
    import structlog
    import torch

    from shared.emit import SyncEmitter
    from shared.logs import configure_logging

    spec = payload.spec
    configure_logging(payload.log_level, payload.log_json)
    structlog.contextvars.bind_contextvars(job_id=spec.job_id, rank=rank)
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    client = redis.Redis.from_url(payload.redis_url)
    try:
        emitter = SyncEmitter(client, payload.job_stream_maxlen)
        outcome = _train(rank, info, payload, emitter, stop, gate, hold)
    finally:
        client.close()
    if outcome:
        raise SystemExit(int(outcome))


def _train(
    rank: int,
    info: DistInfo,
    payload: Payload,
    emitter: EventSink,
    stop: MpEvent,
    gate: Synchronized[int],
    hold: Any,
) -> int:
    """Train, emit the final event the gate allows, and say how the process ends."""
    import structlog

    from services.worker.ddp import process_group
    from services.worker.hardware import resolve_device
    from services.worker.preempt import Held
    from services.worker.progress import NullSink
    from services.worker.trainer import train
    from shared.events import JobFailed, JobPaused

    log = structlog.get_logger("services.worker.process")
    spec = payload.spec
    guard = OrphanGuard(stop, payload.worker_pid)
    try:
        with process_group(info, resolve_device(spec.config, rank)):
            result = train(spec, emitter if info.is_main else NullSink(), guard, info, hold)
        if info.is_main and not stop.is_set() and claim(gate, Gate.TRAINER):
            emitter.emit(result.completed)
        return Preempt.NONE
    except Held as held:
        log.info("training held", kind=held.kind.name, epoch=held.epoch, batch=held.batch)
        if held.kind != Preempt.PAUSE or not info.is_main:
            return held.kind
        if not claim(gate, Gate.TRAINER):
            return Preempt.CANCEL
        emitter.emit(
            JobPaused(
                job_id=spec.job_id,
                checkpoint_path=str(held.path) if held.path else None,
                epoch=held.epoch,
                batch=held.batch,
            )
        )
        return Preempt.PAUSE
    except TrainingCancelled as exc:
        log.info("training stopped", phase=exc.phase)
        return Preempt.CANCEL
    except BaseException as exc:
        if guard.is_set():
            return Preempt.CANCEL
        if isinstance(exc, WorkerError):
            # The config asked for what this machine cannot give (no GPU, no weights...): the
            # user's to fix, and the message says how; tracebacks are for our own bugs.
            log.warning("training cannot run", error=str(exc))
        else:
            log.exception("training failed")
        if claim(gate, Gate.TRAINER):
            emitter.emit(JobFailed(job_id=spec.job_id, error_message=error_text(exc)))
        return EXIT_FAILED


class TrainingRun:
    """The training process(es) of one job, owned by the coroutine that supervises the job."""

    def __init__(self, payload: Payload) -> None:
        self._ctx = start_context()
        self.payload = payload
        self.stop = self._ctx.Event()
        self.gate: Synchronized[int] = self._ctx.Value("i", Gate.OPEN)
        self.hold: Synchronized[int] = self._ctx.Value("i", Preempt.NONE)
        """`Preempt.PAUSE` or `Preempt.SUSPEND` asks the trainer to checkpoint and stop."""
        world = payload.spec.config.devices
        init = free_init_method() if world > 1 else ""
        self.processes: list[BaseProcess] = [
            self._ctx.Process(
                target=_main,
                args=(rank, DistInfo(rank, world, init), payload, self.stop, self.gate, self.hold),
                name=f"heimdall-train-{payload.spec.job_id[:8]}-{rank}",
                daemon=False,
            )
            for rank in range(world)
        ]

    def start(self) -> None:
        for proc in self.processes:
            proc.start()

    @property
    def alive(self) -> bool:
        return any(p.is_alive() for p in self.processes)

    @property
    def exitcodes(self) -> list[int | None]:
        return [p.exitcode for p in self.processes]

    def failed(self) -> bool:
        """Some process exited with an error (the others may be stuck in a collective)."""
        return any(code not in (None, 0) for code in self.exitcodes)

    def claim(self) -> bool:
        """The parent claims the final event (cancel, or a crash the trainer did not report)."""
        return claim(self.gate, Gate.PARENT)

    async def wait(self, timeout: float | None = None, poll_s: float = 0.02) -> bool:
        """Wait until every process has exited (or one failed, when `any_failure`); True if
        they all exited within `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.alive:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll_s)
        return True

    async def stop_within(self, grace_s: float) -> None:
        """Ask the trainer to stop; kill whatever still runs after `grace_s`."""
        self.stop.set()
        if not await self.wait(grace_s):
            self.kill()
            await self.wait(5.0)

    def kill(self) -> None:
        for proc in self.processes:
            if proc.is_alive():
                proc.kill()

    def close(self) -> None:
        """Release the process handles (all processes must have exited)."""
        for proc in self.processes:
            if proc.pid is None:
                pass  # never started (the start was cancelled part-way): nothing to join
            elif proc.is_alive():
                proc.kill()
                proc.join(5)
            else:
                proc.join(0)
            proc.close()

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
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from services.worker.ddp import DistInfo, free_init_method
from services.worker.errors import TrainingCancelled, WorkerError
from shared.config import TrainingConfig
from shared.datasets import Recording

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

OPEN, TRAINER, PARENT = 0, 1, 2
"""States of the terminal gate."""

EXIT_CANCELLED = 3
EXIT_PAUSED = 4
"""The trainer wrote its pause checkpoint and emitted JobPaused."""
EXIT_SUSPENDED = 5
"""The trainer wrote its pause checkpoint because the worker is shutting down."""


@dataclass(frozen=True)
class Payload:
    """What a training process needs; picklable, since it crosses a spawn."""

    job_id: str
    config: TrainingConfig
    recordings: list[Recording]
    out_dir: Path
    redis_url: str
    worker: str
    attempt: int
    progress_interval_s: float
    job_stream_maxlen: int
    seed: int
    log_level: str = "INFO"
    log_json: bool = False
    emitted: tuple[int, int] = (0, 0)
    emitted_epochs: int = 0
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


def claim(gate: Synchronized[int], who: int) -> bool:
    """Claim the right to emit the job's final event; True for the first claimant only."""
    with gate.get_lock():
        if gate.value == OPEN:
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


def _main(  # noqa: C901 - each outcome of a training process, in one place
    rank: int, info: DistInfo, payload: Payload, stop: MpEvent, gate: Any, hold: Any
) -> None:
    """Entry point of one training process."""
    import redis
    import structlog
    import torch

    from services.worker.progress import NullSink
    from services.worker.resume import PAUSE, Held
    from services.worker.trainer import TrainSpec, train
    from shared.emit import SyncEmitter
    from shared.events import JobCompleted, JobFailed, JobPaused
    from shared.logs import configure_logging

    configure_logging(payload.log_level, payload.log_json)
    structlog.contextvars.bind_contextvars(job_id=payload.job_id, rank=rank)
    log = structlog.get_logger("services.worker.process")
    if info.enabled and payload.config.accelerator == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
    client = redis.Redis.from_url(payload.redis_url)
    emitter = SyncEmitter(client, payload.job_stream_maxlen)
    spec = TrainSpec(
        job_id=payload.job_id,
        config=payload.config,
        recordings=payload.recordings,
        out_dir=payload.out_dir,
        worker=payload.worker,
        attempt=payload.attempt,
        progress_interval_s=payload.progress_interval_s,
        seed=payload.seed,
        emitted=payload.emitted,
        emitted_epochs=payload.emitted_epochs,
    )
    guard = OrphanGuard(stop, payload.worker_pid)
    try:
        from services.worker.ddp import process_group
        from services.worker.hardware import resolve_device

        with process_group(info, resolve_device(payload.config, rank)):
            result = train(spec, emitter if info.is_main else NullSink(), guard, info, hold)
        if info.is_main and not stop.is_set() and claim(gate, TRAINER):
            emitter.emit(
                JobCompleted(
                    job_id=payload.job_id,
                    epochs_run=result.epochs_run,
                    best_epoch=result.best_epoch,
                    best_val_loss=result.best_val_loss,
                    checkpoint_path=result.checkpoint_path,
                    onnx_model_path=result.onnx_model_path,
                    onnx_max_abs_diff=result.onnx_max_abs_diff,
                    stopped_early=result.stopped_early,
                )
            )
    except Held as held:
        if held.kind != PAUSE:
            log.info("training suspended", epoch=held.epoch, batch=held.batch)
            raise SystemExit(EXIT_SUSPENDED) from None
        if info.is_main:
            if not claim(gate, TRAINER):
                raise SystemExit(EXIT_CANCELLED) from None
            paused = JobPaused(
                job_id=payload.job_id,
                checkpoint_path=str(held.path),
                epoch=held.epoch,
                batch=held.batch,
            )
            emitter.emit(paused)
        log.info("training paused", epoch=held.epoch, batch=held.batch)
        raise SystemExit(EXIT_PAUSED) from None
    except TrainingCancelled as exc:
        log.info("training stopped", phase=exc.phase)
        raise SystemExit(EXIT_CANCELLED) from None
    except BaseException as exc:
        if guard.is_set():
            raise SystemExit(EXIT_CANCELLED) from None
        log.exception("training failed")
        if claim(gate, TRAINER):
            emitter.emit(JobFailed(job_id=payload.job_id, error_message=error_text(exc)))
        raise SystemExit(1) from None
    finally:
        client.close()


class TrainingRun:
    """The training process(es) of one job, owned by the coroutine that supervises the job."""

    def __init__(self, payload: Payload) -> None:
        self._ctx = start_context()
        self.payload = payload
        self.stop = self._ctx.Event()
        self.gate: Synchronized[int] = self._ctx.Value("i", OPEN)
        self.hold: Synchronized[int] = self._ctx.Value("i", 0)
        """`resume.PAUSE` or `resume.SUSPEND` asks the trainer to checkpoint and stop."""
        world = payload.config.devices
        init = free_init_method() if world > 1 else ""
        self.processes: list[BaseProcess] = [
            self._ctx.Process(
                target=_main,
                args=(rank, DistInfo(rank, world, init), payload, self.stop, self.gate, self.hold),
                name=f"heimdall-train-{payload.job_id[:8]}-{rank}",
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
        return claim(self.gate, PARENT)

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
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            else:
                proc.join(0)
            proc.close()

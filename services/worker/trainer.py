"""A job's training from start (or its latest checkpoint) to its result: a plain typed function.

`train(spec, sink, stop)` emits JobStarted, BatchProgress, EpochCompleted, EvaluationCompleted
(validation every epoch, the test set once at the end) and CheckpointSaved through `sink`,
checks `stop` every batch (training and evaluation), and returns a TrainResult holding the
job's JobCompleted; the caller decides whether it may still be emitted (see `process.py`).
The pieces: `run.py` builds the run, `loop.py` runs its epochs, `state.py` says what a
checkpoint holds, `artifacts.py` writes them and the ONNX model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import structlog
import torch

from services.worker import ddp, state
from services.worker.artifact_sync import drop
from services.worker.artifacts import export_best, save_hold
from services.worker.checkpoint import BEST, load_checkpoint
from services.worker.ddp import SINGLE, DistInfo
from services.worker.errors import TrainingCancelled
from services.worker.loop import assess, run_epoch
from services.worker.preempt import Held, HoldSignal
from services.worker.progress import EventSink, ProgressReporter, StopSignal
from services.worker.resume import RESUME, ResumePoint, latest_point
from services.worker.run import Run, TrainSpec, fit_features, prepare
from shared.events import EpochCompleted, JobCompleted, JobStarted, JobWarning
from shared.splits import test_problem

log = structlog.get_logger(__name__)


@dataclass
class TrainResult:
    """The job's final event (not yet emitted) and what only the trainer's caller needs."""

    completed: JobCompleted
    seed: int
    history: list[EpochCompleted] = field(default_factory=list)


def train(
    spec: TrainSpec,
    sink: EventSink,
    stop: StopSignal,
    info: DistInfo = SINGLE,
    hold: HoldSignal | None = None,
) -> TrainResult:
    """Train `spec.config` on `spec.recordings`, continuing from the job's latest resumable
    checkpoint when there is one; raises TrainingCancelled when `stop` is set, Held once a
    pause checkpoint is written after `hold` was set, WorkerError subclasses for jobs that
    cannot run. Rank 0 alone emits and writes files."""
    point = latest_point(spec.out_dir)
    if point is not None:
        spec = replace(spec, seed=point.seed)  # a resumed run keeps its seed
    run = prepare(spec, info, initialise=point is None)
    logger = log.bind(job_id=spec.job_id, rank=info.rank, seed=run.seed, device=str(run.device))
    if info.is_main:
        sink.emit(_started(run, point))
        if point is None:
            for message in _warnings(run):
                sink.emit(JobWarning(job_id=spec.job_id, message=message))
    logger.info("training started", train=len(run.split.train), val=len(run.split.val))
    if point is None:
        fit_features(run, stop)
    else:
        logger.info("resuming", epoch=point.epoch, batch=point.batch, checkpoint=str(point.path))
        state.restore(run, point.state)
    history, last = _epochs(run, sink, stop, hold, point)
    completed = _finish(run, sink, last, stop)
    logger.info("training finished", epochs=completed.epochs_run, onnx=completed.onnx_max_abs_diff)
    return TrainResult(completed=completed, seed=run.seed, history=history)


def _started(run: Run, point: ResumePoint | None) -> JobStarted:
    spec, info = run.spec, run.info
    return JobStarted(
        job_id=spec.job_id,
        worker=spec.worker,
        attempt=spec.attempt,
        dataset_size=run.split.size,
        train_samples=len(run.split.train),
        val_samples=len(run.split.val),
        test_samples=len(run.split.test),
        num_classes=len(run.split.classes),
        total_batches=len(run.train_loader),
        start_epoch=point.epoch if point else 1,
        device=str(run.device) if not info.enabled else f"{run.device} x{info.world_size}",
        seed=run.seed,
        warmup_steps=run.schedule.warmup_steps,
        precision=run.precision.name,
        threads=torch.get_num_threads(),
        init_from_job=run.init.job_id if run.init else None,
        head_reinitialised=bool(run.init and run.init.head_reinitialised),
    )


def _warnings(run: Run) -> list[str]:
    """What a fresh run does other than its config says, said once, at its start."""
    config, out = run.config, []
    wanted = config.warmup_epochs * len(run.train_loader)
    if run.schedule.warmup_steps < wanted:
        out.append(
            f"warmup_epochs={config.warmup_epochs} is {wanted} steps, more than half of the"
            f" {run.schedule.total_steps}-step run: warm-up cut to"
            f" {run.schedule.warmup_steps} steps"
        )
    if run.init is not None and run.init.head_reinitialised:
        out.append(
            f"init_from_job {run.init.job_id}: its classes {run.init.source_classes} differ"
            f" from this job's {run.split.classes}; the backbone starts from its weights and"
            " the head from a fresh initialisation"
        )
    counts = Counter(r.label for r in run.spec.recordings)
    no_test = test_problem(counts, config.validation_split, config.test_split)
    if no_test:
        out.append(no_test)
    if config.aug_freq_shift_hz > 0 and getattr(run.params, "channels", "real") != "iq":
        out.append(
            "aug_freq_shift_hz applies to IQ recordings only (a real signal has no sign of"
            " frequency to shift); this job's recordings are real, so it trains without it"
        )
    return out


def _epochs(
    run: Run,
    sink: EventSink,
    stop: StopSignal,
    hold: HoldSignal | None,
    point: ResumePoint | None,
) -> tuple[list[EpochCompleted], int]:
    """The epochs still to run, up to the last or an early stop, and the last epoch done;
    writes the pause checkpoint and re-raises when a hold stops an epoch."""
    spec, info, epochs = run.spec, run.info, run.config.epochs
    reporter = (
        ProgressReporter(
            sink, spec.job_id, len(run.train_loader), spec.progress_interval_s, spec.emitted
        )
        if info.is_main
        else None
    )
    first, partial = (point.epoch, point.partial) if point else (1, None)
    history: list[EpochCompleted] = []
    last = first - 1
    if last > 0 and run.early.should_stop and last < epochs:
        return history, last  # resumed from the checkpoint of an early stop
    for epoch in range(first, epochs + 1):
        try:
            history.append(run_epoch(run, epoch, sink, reporter, stop, hold, partial))
        except Held as held:
            held.path = save_hold(run, sink, epoch, held.partial) if info.is_main else None
            ddp.barrier(info)
            raise
        partial, last = None, epoch
        if stop.is_set():
            raise TrainingCancelled("between epochs")
        if run.early.should_stop and epoch < epochs:
            log.info("early stop", job_id=spec.job_id, epoch=epoch, best=run.early.best_epoch)
            break
    return history, last


def _test(run: Run, sink: EventSink, stop: StopSignal) -> None:
    """The test set's evaluation with the best epoch's weights, once (every rank takes part;
    rank 0 emits). A re-run after a crash may emit it again: the recorder keeps the first."""
    loader, best = run.loaders.test, run.early.best_epoch
    if loader is None or best is None:
        return
    ddp.barrier(run.info)  # best.pt is rank 0's
    path = run.spec.out_dir / BEST
    if not path.exists():
        return
    run.network.load_state_dict(load_checkpoint(path)["model"])
    result = assess(run, loader, run.split.test, stop, "test")
    if result is not None and run.info.is_main:
        sink.emit(result.event(run.spec.job_id, "test", best, run.split.classes))


def _finish(run: Run, sink: EventSink, last: int, stop: StopSignal) -> JobCompleted:
    """The test evaluation, then the job's JobCompleted after the ONNX export (rank 0);
    removes the pause checkpoint."""
    spec, info, early = run.spec, run.info, run.early
    _test(run, sink, stop)
    onnx_path, onnx_diff = None, None
    if info.is_main and spec.export_onnx:
        if stop.is_set():
            raise TrainingCancelled("export")
        onnx_path, onnx_diff = export_best(run)
    if info.is_main:
        (spec.out_dir / RESUME).unlink(missing_ok=True)
        drop(spec.storage, spec.job_id, RESUME)
    return JobCompleted(
        job_id=spec.job_id,
        epochs_run=last,
        best_epoch=early.best_epoch,
        best_val_loss=early.best_val_loss,
        checkpoint_path=str(spec.out_dir / BEST) if info.is_main else None,
        onnx_model_path=onnx_path,
        onnx_max_abs_diff=onnx_diff,
        stopped_early=early.should_stop and last < run.config.epochs,
        monitor=run.config.monitor if run.split.val else "train_loss",
        best_value=early.best_value,
    )

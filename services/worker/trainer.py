"""The training loop: a plain typed function from a TrainingConfig to artifacts and events.

`train(spec, sink, stop)` emits JobStarted, BatchProgress, EpochCompleted and CheckpointSaved
through `sink`, checks `stop` every batch (training and validation), and returns a TrainResult;
the caller decides whether JobCompleted may still be emitted (see `process.py`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from services.worker import ddp, resume
from services.worker.artifacts import export_best, save_epoch, save_hold
from services.worker.bounds import check_batch_fits
from services.worker.checkpoint import BEST, LAST
from services.worker.data import (
    Split,
    WaveformDataset,
    check_recordings,
    feature_params,
    make_loader,
    resolve_seed,
    signal_format,
    stratified_split,
)
from services.worker.ddp import SINGLE, DistInfo
from services.worker.errors import TrainingCancelled
from services.worker.features import FeatureExtractor, FeatureParams, LogMel, finish_stats
from services.worker.features import compute_stats as feature_sums
from services.worker.hardware import resolve_device, uses_amp
from services.worker.model import build_model
from services.worker.optim import EarlyStopping, LrSchedule, build_optimizer
from services.worker.progress import EventSink, ProgressReporter, StopSignal
from services.worker.resume import NONE, Held, HoldAt, HoldSignal, Partial, ResumePoint
from shared.config import TrainingConfig
from shared.datasets import Recording
from shared.events import EpochCompleted, JobStarted

log = structlog.get_logger(__name__)
Batches = DataLoader[tuple[torch.Tensor, int]]


@dataclass
class TrainSpec:
    """One job's training run: what to train and where its artifacts go."""

    job_id: str
    config: TrainingConfig
    recordings: list[Recording]
    out_dir: Path
    worker: str = ""
    attempt: int = 1
    progress_interval_s: float = 0.25
    export_onnx: bool = True
    seed: int | None = None
    """The resolved seed (see `data.resolve_seed`); None resolves it here (single process)."""
    emitted: tuple[int, int] = (0, 0)
    """(epoch, batch) of the last batch point an earlier attempt emitted: a run resumed after a
    crash re-trains from its checkpoint but emits none of these again."""
    emitted_epochs: int = 0
    """Epochs whose EpochCompleted an earlier attempt emitted."""


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int | None
    best_val_loss: float | None
    stopped_early: bool
    checkpoint_path: str | None
    last_checkpoint_path: str | None
    onnx_model_path: str | None
    onnx_max_abs_diff: float | None
    seed: int
    history: list[EpochCompleted] = field(default_factory=list)


@dataclass
class Run:
    """Everything built before the first epoch (exposed for tests and the benchmark)."""

    spec: TrainSpec
    info: DistInfo
    device: torch.device
    seed: int
    split: Split
    params: FeatureParams
    train_loader: Batches
    val_loader: Batches
    network: nn.Module
    """The model itself; `model` may be its DDP wrapper."""
    model: nn.Module
    optimizer: torch.optim.AdamW
    schedule: LrSchedule
    early: EarlyStopping
    amp: bool
    scaler: torch.amp.GradScaler
    features: FeatureExtractor | None = None
    trainable: list[nn.Parameter] = field(default_factory=list)
    epoch_loaders: dict[str, torch.Tensor] = field(default_factory=dict)
    """The loaders' generator states as the current epoch began (for a mid-epoch pause)."""


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    gradient_norm: float | None
    batches: int


def prepare(spec: TrainSpec, info: DistInfo = SINGLE) -> Run:
    """Device, model, split and loaders; fails fast (device, weights, data) before any epoch."""
    config = spec.config
    device = resolve_device(config, info.rank)
    seed = spec.seed if spec.seed is not None else resolve_seed(config)
    torch.manual_seed(seed)
    check_recordings(spec.recordings, config)
    split = stratified_split(spec.recordings, config.validation_split, seed)
    network = build_model(config, len(split.classes)).to(device)
    amp = uses_amp(device)
    if amp:
        network = network.to(memory_format=torch.channels_last)
    fmt = signal_format(spec.recordings, config)
    params = feature_params(fmt, config)
    check_batch_fits(network, params, config.batch_size, device)
    train_ds = WaveformDataset(split.train, split.classes, fmt)
    val_ds = WaveformDataset(split.val, split.classes, fmt)
    sampler: DistributedSampler[int] | None = None
    val_part: Any = val_ds
    if info.enabled:
        sampler = DistributedSampler(
            train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed
        )
        val_part = Subset(val_ds, list(range(info.rank, len(val_ds), info.world_size)))
    pin = device.type == "cuda"
    bs, workers = config.batch_size, config.num_workers
    train_loader = make_loader(
        train_ds,
        batch_size=bs,
        num_workers=workers,
        shuffle=True,
        seed=seed + 1,
        pin_memory=pin,
        sampler=sampler,
    )
    val_loader = make_loader(
        val_part,
        batch_size=bs,
        num_workers=workers,
        shuffle=False,
        seed=seed + 1,
        pin_memory=pin,
    )
    model = ddp.wrap(network, info, device)
    optimizer = build_optimizer(network, config)
    return Run(
        spec=spec,
        info=info,
        device=device,
        seed=seed,
        split=split,
        params=params,
        train_loader=train_loader,
        val_loader=val_loader,
        network=network,
        model=model,
        optimizer=optimizer,
        schedule=LrSchedule.from_config(config),
        early=EarlyStopping(config.early_stop_patience),
        amp=amp,
        scaler=torch.amp.GradScaler(device.type, enabled=amp),
        trainable=[p for p in network.parameters() if p.requires_grad],
    )


def fit_features(run: Run, stop: StopSignal) -> FeatureExtractor:
    """Normalisation statistics over the training split (all ranks' shards), on the device."""
    logmel = LogMel(run.params).to(run.device)
    sums = feature_sums(run.train_loader, logmel, run.device, stop)
    mean, std = finish_stats(*ddp.all_sum(run.info, *sums))
    run.features = FeatureExtractor(run.params, mean, std).to(run.device).eval()
    return run.features


def _inputs(run: Run, wave: torch.Tensor) -> torch.Tensor:
    assert run.features is not None
    with torch.no_grad():
        x = run.features(wave.to(run.device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if run.amp else x


def _hold_kind(run: Run, hold: HoldSignal | None, batch: int) -> int:
    """The hold to honour before training batch `batch` + 1. Data-parallel ranks must stop at
    the same batch, so they agree (one collective) at epoch starts only."""
    if hold is None:
        return NONE
    if not run.info.enabled:
        return hold.value
    if batch > 0:
        return NONE
    flag = torch.tensor([float(hold.value)], device=run.device, dtype=torch.float64)
    (flag,) = ddp.all_sum(run.info, flag)
    return NONE if float(flag) == 0 else max(1, round(float(flag) / run.info.world_size))


def train_epoch(
    run: Run,
    epoch: int,
    lr: float,
    reporter: ProgressReporter | None,
    stop: StopSignal,
    hold: HoldSignal | None = None,
    partial: Partial | None = None,
) -> EpochStats:
    """One pass over the training split (or its rest, after `partial`); per-batch values stay
    on the device (see progress.py). Raises HoldAt at a batch boundary when `hold` is set."""
    run.model.train()
    if isinstance(run.train_loader.sampler, DistributedSampler):
        run.train_loader.sampler.set_epoch(epoch)
    if partial is None:
        run.epoch_loaders = resume.loader_states(run)
        partial = Partial()
    else:
        resume.set_loader_states(run, run.epoch_loaders)
    loss_sum, correct_sum, norm_sum = partial.tensors(run.device)
    seen, batches, skip = partial.seen, partial.batches, partial.batches
    started = time.perf_counter() - partial.elapsed_s
    batches_iter = iter(run.train_loader)
    for _ in range(skip):
        next(batches_iter)
    for batch, (wave, label) in enumerate(batches_iter, start=skip + 1):
        if stop.is_set():
            raise TrainingCancelled("training")
        kind = _hold_kind(run, hold, batch - 1)
        if kind != NONE:
            if reporter is not None:
                reporter.flush()
            done = Partial(
                float(loss_sum), float(correct_sum), float(norm_sum), seen, batches,
                time.perf_counter() - started,
            )  # fmt: skip
            raise HoldAt(kind, epoch, done)
        x = _inputs(run, wave)
        label = label.to(run.device, non_blocking=True)
        with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.amp):
            logits = run.model(x)
            loss = nn.functional.cross_entropy(logits, label)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
        grads = [p.grad for p in run.trainable if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        n = label.shape[0]
        loss_d = loss.detach()
        correct = (logits.detach().argmax(dim=1) == label).sum()
        loss_sum += loss_d * n
        correct_sum += correct
        norm_sum += norm
        seen += n
        batches = batch
        if reporter is not None:
            reporter.record(epoch, batch, loss_d, correct / n, norm, lr)
    if reporter is not None:
        reporter.flush()
    counts = torch.tensor([seen, batches], device=run.device, dtype=torch.float64)
    loss_sum, correct_sum, norm_sum, counts = ddp.all_sum(
        run.info, loss_sum, correct_sum, norm_sum, counts
    )
    total, total_batches = counts.tolist()
    grad_norm = float(norm_sum) / max(total_batches, 1)
    return EpochStats(
        loss=float(loss_sum) / max(total, 1),
        accuracy=float(correct_sum) / max(total, 1),
        gradient_norm=grad_norm if math.isfinite(grad_norm) else None,
        batches=int(total_batches),
    )


def validate(run: Run, stop: StopSignal) -> tuple[float, float] | None:
    """Loss and accuracy over the validation split (all ranks), or None when it is empty."""
    run.network.eval()
    zero = torch.zeros((), device=run.device, dtype=torch.float64)
    loss_sum, correct_sum, seen = zero.clone(), zero.clone(), zero.clone()
    with torch.inference_mode():
        if stop.is_set():
            raise TrainingCancelled("validation")
        for wave, label in run.val_loader:
            if stop.is_set():
                raise TrainingCancelled("validation")
            x = _inputs(run, wave)
            label = label.to(run.device, non_blocking=True)
            with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.amp):
                logits = run.network(x)
            loss_sum += nn.functional.cross_entropy(logits.float(), label, reduction="sum")
            correct_sum += (logits.argmax(dim=1) == label).sum()
            seen += label.shape[0]
    loss_sum, correct_sum, seen = ddp.all_sum(run.info, loss_sum, correct_sum, seen)
    if float(seen) == 0:
        return None
    return float(loss_sum) / float(seen), float(correct_sum) / float(seen)


def run_epoch(
    run: Run,
    epoch: int,
    sink: EventSink,
    reporter: ProgressReporter | None,
    stop: StopSignal,
    hold: HoldSignal | None = None,
    partial: Partial | None = None,
) -> EpochCompleted:
    """One epoch (1-based) as a job runs it: schedule, training, validation, best/early-stop
    bookkeeping, EpochCompleted and checkpoints (rank 0)."""
    config = run.spec.config
    started = time.perf_counter() - (partial.elapsed_s if partial else 0.0)
    lr = run.schedule.apply(run.optimizer, epoch - 1)
    stats = train_epoch(run, epoch, lr, reporter, stop, hold, partial)
    val = validate(run, stop)
    monitored = val[0] if val is not None else stats.loss
    is_best = run.early.update(epoch, monitored)
    run.schedule.observe(epoch - 1, monitored)
    best = run.early.best_loss
    event = EpochCompleted(
        job_id=run.spec.job_id,
        epoch=epoch,
        total_epochs=config.epochs,
        train_loss=stats.loss,
        val_loss=val[0] if val else None,
        train_accuracy=stats.accuracy,
        val_accuracy=val[1] if val else None,
        learning_rate=lr,
        gradient_norm=stats.gradient_norm,
        epoch_time_s=time.perf_counter() - started,
        is_best=is_best,
        best_epoch=run.early.best_epoch,
        best_val_loss=best if math.isfinite(best) else None,
    )
    if run.info.is_main:
        if epoch > run.spec.emitted_epochs:
            sink.emit(event)
        save_epoch(run, sink, epoch, is_best)
    return event


def _resume_point(spec: TrainSpec) -> ResumePoint | None:
    point = resume.latest_point(spec.out_dir)
    if point is not None:
        spec.seed = point.seed
    return point


def train(  # noqa: C901 - to be split with the worker core (issue 18)
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
    config = spec.config
    point = _resume_point(spec)
    run = prepare(spec, info)
    logger = log.bind(job_id=spec.job_id, rank=info.rank, seed=run.seed, device=str(run.device))
    total_batches = len(run.train_loader)
    if info.is_main:
        sink.emit(
            JobStarted(
                job_id=spec.job_id,
                worker=spec.worker,
                attempt=spec.attempt,
                dataset_size=run.split.size,
                train_samples=len(run.split.train),
                val_samples=len(run.split.val),
                num_classes=len(run.split.classes),
                total_batches=total_batches,
                start_epoch=point.epoch if point else 1,
                device=str(run.device) if not info.enabled else f"{run.device} x{info.world_size}",
            )
        )
    logger.info("training started", train=len(run.split.train), val=len(run.split.val))
    first, partial = 1, None
    if point is None:
        fit_features(run, stop)
    else:
        resume.restore(run, point)
        first, partial = point.epoch, point.partial
        if partial is not None:
            run.epoch_loaders = point.state["loaders"]
        logger.info("resuming", epoch=point.epoch, batch=point.batch, checkpoint=str(point.path))
    reporter = (
        ProgressReporter(
            sink, spec.job_id, total_batches, spec.progress_interval_s, skip_through=spec.emitted
        )
        if info.is_main
        else None
    )
    history: list[EpochCompleted] = []
    epoch = first - 1
    stopped_early = epoch > 0 and run.early.should_stop and epoch < config.epochs
    if point is not None:
        resume.restore_random(run, point)
    for epoch in range(first, config.epochs + 1) if not stopped_early else ():
        try:
            history.append(run_epoch(run, epoch, sink, reporter, stop, hold, partial))
        except HoldAt as held:
            path = save_hold(run, sink, epoch, held.partial) if info.is_main else spec.out_dir
            ddp.barrier(info)
            raise Held(held.kind, path, epoch, held.partial.batches) from None
        partial = None
        if stop.is_set():
            raise TrainingCancelled("between epochs")
        if run.early.should_stop and epoch < config.epochs:
            stopped_early = True
            logger.info("early stop", epoch=epoch, best_epoch=run.early.best_epoch)
            break
    result = TrainResult(
        epochs_run=epoch,
        best_epoch=run.early.best_epoch,
        best_val_loss=run.early.best_loss if math.isfinite(run.early.best_loss) else None,
        stopped_early=stopped_early,
        checkpoint_path=str(spec.out_dir / BEST) if info.is_main else None,
        last_checkpoint_path=str(spec.out_dir / LAST) if info.is_main else None,
        onnx_model_path=None,
        onnx_max_abs_diff=None,
        seed=run.seed,
        history=history,
    )
    if info.is_main and spec.export_onnx:
        if stop.is_set():
            raise TrainingCancelled("export")
        result.onnx_model_path, result.onnx_max_abs_diff = export_best(run)
    if info.is_main:
        (spec.out_dir / resume.RESUME).unlink(missing_ok=True)
    logger.info("training finished", epochs=epoch, onnx_diff=result.onnx_max_abs_diff)
    return result

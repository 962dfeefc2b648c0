"""The training loop: one epoch's training pass, a split's predictions, and the epoch as a job
runs it (schedule, validation, best/early-stop bookkeeping, EpochCompleted, checkpoints).

Per-batch values stay on the device (see progress.py); the stop signal is checked every batch,
training and validation, and a hold at every training batch boundary (see preempt.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from services.worker import ddp
from services.worker.artifacts import save_epoch
from services.worker.errors import TrainingCancelled
from services.worker.preempt import Held, HoldSignal, Preempt, pending
from services.worker.progress import EventSink, ProgressReporter, StopSignal
from services.worker.resume import Partial
from services.worker.run import Batches, Run
from shared.events import EpochCompleted


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    gradient_norm: float | None
    batches: int


@dataclass
class Predictions:
    """A split's logits (float32, on the device) and labels, in loader order, for this rank."""

    logits: torch.Tensor
    labels: torch.Tensor


def _inputs(run: Run, wave: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        x = run.features(wave.to(run.device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if run.amp else x


def train_epoch(
    run: Run,
    epoch: int,
    lr: float,
    reporter: ProgressReporter | None,
    stop: StopSignal,
    hold: HoldSignal | None = None,
    partial: Partial | None = None,
) -> EpochStats:
    """One pass over the training split (or its rest, after `partial`); raises Held at a batch
    boundary when `hold` asks for it, carrying the epoch's sums so far."""
    run.model.train()
    if partial is None:
        run.loaders.begin_epoch(epoch)
        partial = Partial()
    loss_sum, correct_sum, norm_sum = partial.tensors(run.device)
    seen, batches, skip = partial.seen, partial.batches, partial.batches
    started = time.perf_counter() - partial.elapsed_s
    batches_iter = iter(run.train_loader)
    for _ in range(skip):
        next(batches_iter)
    for batch, (wave, label) in enumerate(batches_iter, start=skip + 1):
        if stop.is_set():
            raise TrainingCancelled("training")
        kind = pending(hold, run.info, run.device, batch - 1)
        if kind != Preempt.NONE:
            if reporter is not None:
                reporter.flush()
            done = Partial(
                float(loss_sum), float(correct_sum), float(norm_sum), seen, batches,
                time.perf_counter() - started,
            )  # fmt: skip
            raise Held(kind, epoch, done)
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


def predict(run: Run, loader: Batches, stop: StopSignal, phase: str) -> Predictions:
    """The model's logits for every sample `loader` yields on this rank (no gradients); the
    building block of validation and of any evaluation of a split."""
    run.network.eval()
    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    with torch.inference_mode():
        if stop.is_set():
            raise TrainingCancelled(phase)
        for wave, label in loader:
            if stop.is_set():
                raise TrainingCancelled(phase)
            x = _inputs(run, wave)
            with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.amp):
                out = run.network(x)
            logits.append(out.float())
            labels.append(label.to(run.device, non_blocking=True))
    if not logits:
        empty = torch.zeros(0, dtype=torch.long, device=run.device)
        return Predictions(torch.zeros(0, len(run.split.classes), device=run.device), empty)
    return Predictions(torch.cat(logits), torch.cat(labels))


def validate(run: Run, stop: StopSignal) -> tuple[float, float] | None:
    """Loss and accuracy over the validation split (all ranks), or None when it is empty."""
    out = predict(run, run.val_loader, stop, "validation")
    with torch.inference_mode():
        loss_sum = nn.functional.cross_entropy(out.logits, out.labels, reduction="sum").double()
        correct = (out.logits.argmax(dim=1) == out.labels).sum().double()
        seen = torch.tensor(float(out.labels.numel()), device=run.device, dtype=torch.float64)
        loss_sum, correct, seen = ddp.all_sum(run.info, loss_sum, correct, seen)
    if float(seen) == 0:
        return None
    return float(loss_sum) / float(seen), float(correct) / float(seen)


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
    config = run.config
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

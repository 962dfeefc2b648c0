"""The training loop: one epoch's training pass, a split's predictions and assessment, and the
epoch as a job runs it (schedule, validation, best/early-stop bookkeeping by the monitored value,
EpochCompleted and the validation's EvaluationCompleted, checkpoints).

Per-batch values stay on the device (see progress.py); the stop signal is checked every batch,
training and validation, and a hold at every training batch boundary (see preempt.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from services.worker import ddp, metrics
from services.worker.artifacts import save_epoch
from services.worker.errors import TrainingCancelled
from services.worker.optim import Watched
from services.worker.preempt import Held, HoldSignal, Preempt, pending
from services.worker.progress import EventSink, ProgressReporter, StopSignal
from services.worker.resume import Partial
from services.worker.run import Batches, Run
from shared.datasets import Recording
from shared.events import EpochCompleted, EvaluationCompleted


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    gradient_norm: float | None
    batches: int
    samples: int
    """Training samples in the metrics, all ranks together: each sample once."""
    learning_rate: float
    """The rate of the epoch's last step (the schedule moves every step)."""


@dataclass
class Predictions:
    """A split's logits (float32, on the device) and labels, in loader order, for this rank."""

    logits: torch.Tensor
    labels: torch.Tensor


def _inputs(run: Run, wave: torch.Tensor, *, train: bool) -> torch.Tensor:
    """What the network sees: features of the waveforms, augmented for training batches."""
    with torch.no_grad():
        wave = wave.to(run.device, non_blocking=True)
        if train:
            wave = run.augment.wave(wave)
        x = run.features(wave)
        if train:
            x = run.augment.features(x)
    return x.contiguous(memory_format=torch.channels_last) if run.precision.channels_last else x


def _counted(run: Run, batch: int, n: int) -> int | None:
    """How many of training batch `batch`'s `n` samples count: None (all) for one process;
    with data parallelism, none of the distributed sampler's padding, which comes last."""
    if not run.info.enabled:
        return None
    before = (batch - 1) * run.config.batch_size
    return max(0, min(n, run.counted - before))


def _step(
    run: Run, x: torch.Tensor, label: torch.Tensor, counted: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step; returns the logits, the loss and the gradients' total norm (before
    clipping)."""
    with run.precision.autocast(run.device):
        logits = run.model(x)
        loss = run.criterion(logits, label, counted)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    clip = run.config.grad_clip_norm
    if clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(run.trainable, clip, foreach=True)
    else:
        grads = [p.grad for p in run.trainable if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return logits.detach(), loss.detach(), norm


def train_epoch(
    run: Run,
    epoch: int,
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
    per_epoch = len(run.train_loader)
    lr = run.schedule.lr_at((epoch - 1) * per_epoch + skip)
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
        lr = run.schedule.apply(run.optimizer, (epoch - 1) * per_epoch + batch - 1)
        x = _inputs(run, wave, train=True)
        label = label.to(run.device, non_blocking=True)
        counted = _counted(run, batch, label.shape[0])
        logits, loss, norm = _step(run, x, label, counted)
        n = label.shape[0] if counted is None else counted
        correct = (logits[:n].argmax(dim=1) == label[:n]).sum()
        loss_sum += loss * n
        correct_sum += correct
        norm_sum += norm
        seen += n
        batches = batch
        if reporter is not None:
            reporter.record(epoch, batch, loss, correct / max(n, 1), norm, lr)
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
        samples=int(total),
        learning_rate=lr,
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
            x = _inputs(run, wave, train=False)
            with run.precision.autocast(run.device):
                out = run.network(x)
            logits.append(out.float())
            labels.append(label.to(run.device, non_blocking=True))
    if not logits:
        empty = torch.zeros(0, dtype=torch.long, device=run.device)
        return Predictions(torch.zeros(0, len(run.split.classes), device=run.device), empty)
    return Predictions(torch.cat(logits), torch.cat(labels))


@dataclass
class Assessment:
    """A split's loss, and the counts its metrics come from, summed over the ranks."""

    loss: float
    samples: int
    matrix: npt.NDArray[np.int64]
    band_lows: list[float]
    band_total: npt.NDArray[np.int64]
    band_correct: npt.NDArray[np.int64]

    def summary(self, classes: list[str]) -> metrics.Summary:
        return metrics.summarise(
            self.matrix, classes, self.band_lows, self.band_total, self.band_correct
        )

    def event(self, job_id: str, phase: str, epoch: int, classes: list[str]) -> EvaluationCompleted:
        s = self.summary(classes)
        return EvaluationCompleted(
            job_id=job_id,
            phase=phase,
            epoch=epoch,
            classes=list(classes),
            confusion_matrix=self.matrix.tolist(),
            per_class=s.per_class,
            accuracy_by_snr=s.accuracy_by_snr,
            accuracy=s.accuracy,
            macro_f1=s.macro_f1,
            loss=self.loss,
            samples=self.samples,
        )


def assess(
    run: Run, loader: Batches, recordings: Sequence[Recording], stop: StopSignal, phase: str
) -> Assessment | None:
    """Loss, confusion matrix and SNR-band counts of a split (all ranks; `recordings` is the
    whole split, in loader order, of which this rank holds every world_size-th), or None when
    it is empty."""
    out = predict(run, loader, stop, phase)
    k = len(run.split.classes)
    lows, bands = metrics.snr_bands([r.snr_db for r in recordings])
    mine = torch.as_tensor(bands[run.info.rank :: run.info.world_size], device=run.device)
    with torch.inference_mode():
        loss_sum = nn.functional.cross_entropy(out.logits, out.labels, reduction="sum").double()
        predicted = out.logits.argmax(dim=1)
        matrix = torch.bincount(out.labels * k + predicted, minlength=k * k).double()
        known = mine >= 0
        right = known & (predicted == out.labels)
        nb = max(len(lows), 1)
        total = torch.bincount(mine[known], minlength=nb).double()
        correct = torch.bincount(mine[right], minlength=nb).double()
        loss_sum, matrix, total, correct = ddp.all_sum(run.info, loss_sum, matrix, total, correct)
    seen = int(matrix.sum())
    if seen == 0:
        return None
    as_int = lambda t: t.round().long().cpu().numpy()  # noqa: E731 - sums come back as float64
    return Assessment(
        loss=float(loss_sum) / seen,
        samples=seen,
        matrix=as_int(matrix).reshape(k, k),
        band_lows=lows,
        band_total=as_int(total),
        band_correct=as_int(correct),
    )


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
    stats = train_epoch(run, epoch, reporter, stop, hold, partial)
    val = assess(run, run.val_loader, run.split.val, stop, "validation")
    summary = val.summary(run.split.classes) if val is not None else None
    watched = Watched.of(config.monitor, stats.loss, val, summary)
    val_loss = val.loss if val is not None else None
    is_best = run.early.update(
        epoch, watched.score, watched.value, val_loss if val_loss is not None else stats.loss
    )
    run.schedule.observe(epoch * len(run.train_loader) - 1, watched.score)
    event = EpochCompleted(
        job_id=run.spec.job_id,
        epoch=epoch,
        total_epochs=config.epochs,
        train_loss=stats.loss,
        val_loss=val_loss,
        train_accuracy=stats.accuracy,
        val_accuracy=summary.accuracy if summary else None,
        learning_rate=stats.learning_rate,
        gradient_norm=stats.gradient_norm,
        epoch_time_s=time.perf_counter() - started,
        is_best=is_best,
        best_epoch=run.early.best_epoch,
        best_val_loss=run.early.best_val_loss,
        val_macro_f1=summary.macro_f1 if summary else None,
        monitor=watched.name,
        best_value=run.early.best_value,
    )
    if run.info.is_main:
        if epoch > run.spec.emitted_epochs:
            sink.emit(event)
            if val is not None:
                sink.emit(val.event(run.spec.job_id, "val", epoch, run.split.classes))
        save_epoch(run, sink, epoch, is_best)
    return event

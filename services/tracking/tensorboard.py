"""TensorBoard: one folder of scalar event files per job, written from the job's events.

Per epoch (step = epoch): train_loss, val_loss, train_accuracy, val_accuracy, learning_rate,
gradient_norm, epoch_time_s. Per batch (step = a global batch number that continues across
epochs, `(epoch - 1) * total_batches + batch`): batch/loss, batch/accuracy,
batch/learning_rate, batch/gradient_norm. Wall times are the events' own timestamps.

The writer does blocking file I/O, so the tracker calls `write` in a thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from services.tracking.evaluation import evaluation_scalars
from shared.events import BatchProgress, EpochCompleted, EvaluationCompleted, Event

EPOCH_METRICS = (
    "train_loss",
    "val_loss",
    "train_accuracy",
    "val_accuracy",
    "learning_rate",
    "gradient_norm",
    "epoch_time_s",
)

BATCH_METRICS = ("loss", "accuracy", "learning_rate", "gradient_norm")


class TensorBoardSink:
    """Writes one job's scalars under `log_dir`; not thread-safe (one caller at a time)."""

    def __init__(self, log_dir: Path) -> None:
        # Imported here: the extra is optional and importing it costs a second.
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self._writer: Any = SummaryWriter(log_dir=str(log_dir), max_queue=1000, flush_secs=10)

    def write(self, events: Iterable[Event]) -> None:
        """Add the scalars of these events and flush them to disk."""
        for event in events:
            match event:
                case EpochCompleted():
                    self._epoch(event)
                case BatchProgress():
                    self._batches(event)
                case EvaluationCompleted():
                    for name, value in evaluation_scalars(event):
                        self._writer.add_scalar(name, value, event.epoch, walltime=event.ts)
        self._writer.flush()

    def _epoch(self, event: EpochCompleted) -> None:
        for name in EPOCH_METRICS:
            value = getattr(event, name)
            if value is not None:
                self._writer.add_scalar(name, value, event.epoch, walltime=event.ts)

    def _batches(self, event: BatchProgress) -> None:
        per_epoch = max(event.total_batches, 1)
        for point in event.points:
            step = (point.epoch - 1) * per_epoch + point.batch
            for name in BATCH_METRICS:
                value = getattr(point, name)
                if value is not None:
                    self._writer.add_scalar(f"batch/{name}", value, step, walltime=point.ts)

    def close(self) -> None:
        self._writer.close()

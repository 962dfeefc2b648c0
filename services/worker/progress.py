"""The trainer's two seams (where events go, whether to stop) and throttled batch progress.

Per-batch values stay on the training device until a BatchProgress is due, so a batch costs no
host synchronisation; one transfer then carries every batch since the previous emission.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import torch

from shared.events import BatchPoint, BatchProgress, Event


class EventSink(Protocol):
    """Where the trainer's events go (a SyncEmitter in the training process, a list in tests)."""

    def emit(self, event: Event) -> object: ...


class StopSignal(Protocol):
    """Polled every batch (training and validation); `multiprocessing.Event` fits."""

    def is_set(self) -> bool: ...


class NullSink:
    """Swallows events: for data-parallel ranks other than 0, and for benchmarks."""

    def emit(self, event: Event) -> object:
        return None


class ListSink:
    """Keeps events in memory, for tests and tools."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> object:
        self.events.append(event)
        return None


class NeverStop:
    def is_set(self) -> bool:
        return False


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class ProgressReporter:
    """Collects batch points and emits them at most every `interval_s`, none lost."""

    def __init__(
        self,
        sink: EventSink,
        job_id: str,
        total_batches: int,
        interval_s: float,
        skip_through: tuple[int, int] = (0, 0),
    ) -> None:
        """`skip_through`: (epoch, batch) of the last point an earlier attempt emitted; points
        up to it are not emitted again (a run resumed after a crash repeats a few batches)."""
        self._skip = skip_through
        self._sink = sink
        self._job_id = job_id
        self._total = total_batches
        self._interval = interval_s
        self._last_emit = time.monotonic()
        self._values: list[torch.Tensor] = []
        self._meta: list[tuple[int, int, float, float]] = []

    def record(
        self,
        epoch: int,
        batch: int,
        loss: torch.Tensor,
        accuracy: torch.Tensor,
        grad_norm: torch.Tensor,
        learning_rate: float,
    ) -> None:
        """Add one batch; `loss`, `accuracy` and `grad_norm` are 0-d tensors on the device."""
        if (epoch, batch) <= self._skip:
            return
        self._values.append(torch.stack([loss.float(), accuracy.float(), grad_norm.float()]))
        self._meta.append((epoch, batch, learning_rate, time.time()))
        if time.monotonic() - self._last_emit >= self._interval:
            self.flush()

    def flush(self) -> None:
        """Emit every pending point now (called at the end of each epoch too)."""
        if not self._meta:
            return
        values = torch.stack(self._values).detach().cpu().tolist()
        points = [
            BatchPoint(
                epoch=epoch,
                batch=batch,
                loss=float(v[0]),
                accuracy=float(v[1]),
                learning_rate=lr,
                gradient_norm=_finite(float(v[2])),
                ts=ts,
            )
            for (epoch, batch, lr, ts), v in zip(self._meta, values, strict=True)
        ]
        last = points[-1]
        self._values.clear()
        self._meta.clear()
        self._last_emit = time.monotonic()
        self._sink.emit(
            BatchProgress(
                job_id=self._job_id,
                epoch=last.epoch,
                batch=last.batch,
                total_batches=self._total,
                points=points,
            )
        )

"""Preemption: why a training process stops before its end, as one enum.

The same `Preempt` value is what the supervising coroutine writes into the hold signal (a
shared integer read every training batch), what the trainer raises as `Held` once its pause
checkpoint is written, and the training process's exit code, so the parent reads the outcome
back without a second table (Determined's `should_preempt()` after a checkpoint, in one type).
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path
from typing import Protocol

import torch

from services.worker import ddp
from services.worker.ddp import DistInfo
from services.worker.resume import Partial


class Preempt(IntEnum):
    """A stop before the end; the value is the training process's exit code."""

    NONE = 0
    """Carry on (and exit 0 at the end)."""
    CANCEL = 3
    """The stop signal was set (cancel, delete, a lost lease): no checkpoint, no final event
    from the trainer."""
    PAUSE = 4
    """The user asked: checkpoint at the next batch boundary, then JobPaused."""
    SUSPEND = 5
    """The worker is shutting down: checkpoint at the next batch boundary; the parent
    re-queues the job."""


HOLDS = (Preempt.PAUSE, Preempt.SUSPEND)
"""The preemptions that write a checkpoint at a batch boundary (through the hold signal)."""


class HoldSignal(Protocol):
    """Read every training batch; a `multiprocessing.Value("i")` holding a `Preempt` fits."""

    @property
    def value(self) -> int: ...


class Held(Exception):
    """Training stopped at a batch boundary of `epoch` after `partial.batches` batches because
    of a hold; `path` is the pause checkpoint once the trainer has written it."""

    def __init__(self, kind: Preempt, epoch: int, partial: Partial) -> None:
        super().__init__(f"held at epoch {epoch} after {partial.batches} batches")
        self.kind, self.epoch, self.partial = kind, epoch, partial
        self.path: Path | None = None

    @property
    def batch(self) -> int:
        return self.partial.batches


def pending(
    hold: HoldSignal | None, info: DistInfo, device: torch.device, batches_done: int
) -> Preempt:
    """The hold to honour before the next training batch. Data-parallel ranks must stop at the
    same batch, so they agree (one collective, the highest value wins) at epoch starts only."""
    if hold is None:
        return Preempt.NONE
    if not info.enabled:
        return _as_hold(hold.value)
    if batches_done > 0:
        return Preempt.NONE
    flag = torch.tensor([float(_as_hold(hold.value))], device=device, dtype=torch.float64)
    return _as_hold(round(float(ddp.all_max(info, flag))))


def _as_hold(value: int) -> Preempt:
    return Preempt(value) if value in HOLDS else Preempt.NONE

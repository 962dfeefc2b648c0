"""Optimiser, learning-rate schedule (per step, linear warm-up first) and early stopping.

The schedule is a small explicit object rather than a chain of torch schedulers, because
`plateau` does not compose with warm-up there, and because its whole state must go into a
checkpoint and be inspectable in tests.

Warm-up is counted in optimiser steps: `warmup_epochs` times the batches per epoch, but never more
than half the run (MAX_WARMUP_FRACTION): a warm-up as long as the run would only ever ramp and
never reach the base rate or the schedule. The job's JobStarted says how many steps were used,
and a JobWarning says when the configured warm-up was cut.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn

from services.worker.metrics import Summary
from shared.config import TrainingConfig

STEP_GAMMA = 0.1
"""`step`: the learning rate is multiplied by this every third of the post-warm-up steps."""

PLATEAU_FACTOR = 0.1
"""`plateau`: the learning rate is multiplied by this when the monitored loss stalls."""

MAX_WARMUP_FRACTION = 0.5
"""The longest warm-up, as a fraction of the run's steps."""


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over the parameters that train (the head only when the backbone is frozen)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def plateau_patience(config: TrainingConfig) -> int:
    """Epochs without improvement before `plateau` lowers the rate: half the early-stop
    patience, so the rate drops before the job gives up."""
    return max(1, config.early_stop_patience // 2)


def warmup_steps(config: TrainingConfig, steps_per_epoch: int) -> int:
    """`warmup_epochs` in steps, bounded by MAX_WARMUP_FRACTION of the run."""
    wanted = config.warmup_epochs * steps_per_epoch
    return min(wanted, int(config.epochs * steps_per_epoch * MAX_WARMUP_FRACTION))


@dataclass
class LrSchedule:
    """Learning rate per optimiser step (0-based, counted over the whole run): linear warm-up
    over `warmup_steps`, then `kind` over the steps left."""

    kind: str
    base_lr: float
    total_steps: int
    warmup_steps: int
    patience: int
    plateau_scale: float = 1.0
    plateau_best: float = math.inf
    plateau_bad_epochs: int = 0

    @classmethod
    def from_config(cls, config: TrainingConfig, steps_per_epoch: int) -> LrSchedule:
        return cls(
            kind=config.lr_scheduler,
            base_lr=config.learning_rate,
            total_steps=config.epochs * steps_per_epoch,
            warmup_steps=warmup_steps(config, steps_per_epoch),
            patience=plateau_patience(config),
        )

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / (self.warmup_steps + 1)
        after = step - self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        if self.kind == "cosine":
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * after / span))
        if self.kind == "step":
            every = max(1, span // 3)
            return self.base_lr * STEP_GAMMA ** (after // every)
        return self.base_lr * self.plateau_scale

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the optimiser's rate for `step` and return it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def observe(self, step: int, monitored_loss: float) -> None:
        """End of an epoch whose last step was `step`: `plateau` tracks the monitored score
        (lower is better, see `Watched`; once warm-up is over)."""
        if self.kind != "plateau" or step < self.warmup_steps:
            return
        if monitored_loss < self.plateau_best:
            self.plateau_best = monitored_loss
            self.plateau_bad_epochs = 0
            return
        self.plateau_bad_epochs += 1
        if self.plateau_bad_epochs > self.patience:
            self.plateau_scale *= PLATEAU_FACTOR
            self.plateau_bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class Assessed(Protocol):
    loss: float


@dataclass(frozen=True)
class Watched:
    """An epoch's monitored value (`name`, `value`) and its `score`, lower is better: the
    loss itself, or minus an accuracy or macro-F1."""

    name: str
    value: float
    score: float

    @classmethod
    def of(
        cls, monitor: str, train_loss: float, val: Assessed | None, summary: Summary | None
    ) -> Watched:
        """What `monitor` watches this epoch; without validation the training loss (the
        config refuses any other monitor without a validation split)."""
        if val is None or summary is None:
            return cls("train_loss", train_loss, train_loss)
        if monitor == "val_accuracy":
            return cls(monitor, summary.accuracy, -summary.accuracy)
        if monitor == "val_macro_f1":
            return cls(monitor, summary.macro_f1, -summary.macro_f1)
        return cls("val_loss", val.loss, val.loss)


@dataclass
class EarlyStopping:
    """Stops after `patience` epochs without a better monitored score (lower is better, see
    `Watched`); remembers the best epoch (1-based), its monitored value and its validation
    loss (the training loss when there is no validation split)."""

    patience: int
    best_loss: float = math.inf
    """The best score so far (a checkpoint key: the name predates `monitor`)."""
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_value: float | None = None
    best_val_loss: float | None = None

    def update(
        self, epoch: int, score: float, value: float | None = None, val_loss: float | None = None
    ) -> bool:
        """Record `epoch`'s score; True when it is the best so far."""
        if score < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_value = score if value is None else value
            self.best_val_loss = score if val_loss is None else val_loss
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

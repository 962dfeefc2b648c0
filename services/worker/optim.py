"""Optimiser, learning-rate schedule (per epoch, linear warm-up first) and early stopping.

The schedule is a small explicit object rather than a chain of torch schedulers, because
`plateau` does not compose with warm-up there, and because its whole state must go into a
checkpoint and be inspectable in tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from shared.config import TrainingConfig

STEP_GAMMA = 0.1
"""`step`: the learning rate is multiplied by this every third of the post-warm-up epochs."""

PLATEAU_FACTOR = 0.1
"""`plateau`: the learning rate is multiplied by this when the monitored loss stalls."""


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over the parameters that train (the head only when the backbone is frozen)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def plateau_patience(config: TrainingConfig) -> int:
    """Epochs without improvement before `plateau` lowers the rate: half the early-stop
    patience, so the rate drops before the job gives up."""
    return max(1, config.early_stop_patience // 2)


@dataclass
class LrSchedule:
    """Learning rate per epoch (0-based): linear warm-up over `warmup_epochs`, then `kind`."""

    kind: str
    base_lr: float
    epochs: int
    warmup_epochs: int
    patience: int
    plateau_scale: float = 1.0
    plateau_best: float = math.inf
    plateau_bad_epochs: int = 0

    @classmethod
    def from_config(cls, config: TrainingConfig) -> LrSchedule:
        return cls(
            kind=config.lr_scheduler,
            base_lr=config.learning_rate,
            epochs=config.epochs,
            warmup_epochs=config.warmup_epochs,
            patience=plateau_patience(config),
        )

    def lr_at(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return self.base_lr * (epoch + 1) / (self.warmup_epochs + 1)
        after = epoch - self.warmup_epochs
        span = max(1, self.epochs - self.warmup_epochs)
        if self.kind == "cosine":
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * after / span))
        if self.kind == "step":
            step = max(1, span // 3)
            return self.base_lr * STEP_GAMMA ** (after // step)
        return self.base_lr * self.plateau_scale

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        """Set the optimiser's rate for `epoch` and return it."""
        lr = self.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def observe(self, epoch: int, monitored_loss: float) -> None:
        """End of `epoch`: `plateau` tracks the monitored loss (after warm-up only)."""
        if self.kind != "plateau" or epoch < self.warmup_epochs:
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


@dataclass
class EarlyStopping:
    """Stops after `patience` epochs without a lower monitored loss (val_loss, or train_loss
    when there is no validation split); remembers the best epoch (1-based)."""

    patience: int
    best_loss: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0

    def update(self, epoch: int, loss: float) -> bool:
        """Record `epoch`'s loss; True when it is the best so far."""
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
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

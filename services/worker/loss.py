"""The training loss: cross-entropy with the job's class weighting and label smoothing, over the
samples that count (a data-parallel rank's padding does not).

Validation reports plain cross-entropy (no weights, no smoothing), so val_loss compares across
configs; train_loss is the loss being minimised.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from shared.config import TrainingConfig


def balanced_weights(labels: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    """n / (k · n_c) per class (scikit-learn's `balanced`): every class weighs the same in
    total, however few recordings it has in the train split."""
    counts = Counter(labels)
    n, k = len(labels), len(classes)
    return torch.tensor([n / (k * max(counts[c], 1)) for c in classes], dtype=torch.float32)


@dataclass(frozen=True)
class Criterion:
    weight: torch.Tensor | None
    """Per-class loss weights on the training device, or None (all 1)."""
    label_smoothing: float = 0.0

    @classmethod
    def from_config(
        cls,
        config: TrainingConfig,
        train_labels: Sequence[str],
        classes: Sequence[str],
        device: torch.device,
    ) -> Criterion:
        weight = None
        if config.class_weighting == "balanced":
            weight = balanced_weights(train_labels, classes).to(device)
        return cls(weight=weight, label_smoothing=config.label_smoothing)

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, counted: int | None = None
    ) -> torch.Tensor:
        """The batch's mean loss over its first `counted` samples (all when None), weighted
        as `cross_entropy(..., weight, reduction="mean")` weighs; a batch of padding only
        gives a zero loss that still reaches every parameter."""
        per = nn.functional.cross_entropy(
            logits.float(),
            labels,
            weight=self.weight,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        if counted is None and self.weight is None:
            return per.mean()
        mask = torch.ones_like(per)
        if counted is not None:
            mask[counted:] = 0.0
        norm = mask if self.weight is None else mask * self.weight[labels]
        return (per * mask).sum() / norm.sum().clamp_min(torch.finfo(per.dtype).tiny)

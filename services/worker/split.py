"""The train/validation split: stratified per class and seeded, so a job can be repeated."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from shared.datasets import Recording
from shared.splits import held_out


@dataclass(frozen=True, slots=True)
class Split:
    """The recordings a job trains and validates on, and the class names (index = label id)."""

    train: list[Recording]
    val: list[Recording]
    classes: list[str]

    @property
    def size(self) -> int:
        return len(self.train) + len(self.val)


def stratified_split(recordings: Sequence[Recording], validation_split: float, seed: int) -> Split:
    """Per class, a seeded shuffle and `validation_split` of it held out (at least one recording
    of each class stays in training). The same seed and recordings give the same split."""
    classes = sorted({r.label for r in recordings})
    by_class: dict[str, list[Recording]] = defaultdict(list)
    for rec in sorted(recordings, key=lambda r: (r.label, r.id)):
        by_class[rec.label].append(rec)
    rng = random.Random(seed)
    train: list[Recording] = []
    val: list[Recording] = []
    for label in classes:
        items = by_class[label]
        rng.shuffle(items)
        n_val = held_out(len(items), validation_split)
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return Split(train=train, val=val, classes=classes)

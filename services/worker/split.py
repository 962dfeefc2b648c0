"""The train/validation/test split: stratified per class and seeded, so a job can be repeated.
The three sets are disjoint; validation is taken first, so adding a test set leaves a seeded
job's validation set as it was."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.datasets import Recording
from shared.splits import held_out, held_out_test


@dataclass(frozen=True, slots=True)
class Split:
    """The recordings a job trains, validates and tests on, and the class names (index = label
    id)."""

    train: list[Recording]
    val: list[Recording]
    classes: list[str]
    test: list[Recording] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.train) + len(self.val) + len(self.test)


def stratified_split(
    recordings: Sequence[Recording], validation_split: float, seed: int, test_split: float = 0.0
) -> Split:
    """Per class, a seeded shuffle; its first `validation_split` goes to validation, the next
    `test_split` to the test set (at least one recording of each class stays in training). The
    same seed and recordings give the same split."""
    classes = sorted({r.label for r in recordings})
    by_class: dict[str, list[Recording]] = defaultdict(list)
    for rec in sorted(recordings, key=lambda r: (r.label, r.id)):
        by_class[rec.label].append(rec)
    rng = random.Random(seed)
    train: list[Recording] = []
    val: list[Recording] = []
    test: list[Recording] = []
    for label in classes:
        items = by_class[label]
        rng.shuffle(items)
        n_val = held_out(len(items), validation_split)
        n_test = held_out_test(len(items), validation_split, test_split)
        val.extend(items[:n_val])
        test.extend(items[n_val : n_val + n_test])
        train.extend(items[n_val + n_test :])
    return Split(train=train, val=val, classes=classes, test=test)

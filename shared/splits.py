"""How many recordings of a class a job holds out for validation and for testing, and whether a
split leaves anything to validate on: one rule for the worker's split and the API's check at
submission.

`validation_split` 0.0 asks for no validation (the monitored loss is then the training loss);
any other value must leave at least one recording in validation, or the job would report
validation metrics of nothing. The test set is taken after validation, from what is left, and
never a class's last recording either. A `test_split` that rounds to no test recording at all
(a small dataset under the 0.1 default) is not an error: the job says so in a warning and has
no test evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping


def held_out(count: int, validation_split: float) -> int:
    """Of a class's `count` recordings, how many go to validation: the rounded share, and
    never the class's last recording (every class keeps one for training)."""
    return max(0, min(round(count * validation_split), count - 1))


def held_out_test(count: int, validation_split: float, test_split: float) -> int:
    """Of a class's `count` recordings, how many go to the test set: the rounded share of
    `count`, from what validation leaves, never the class's last recording."""
    n_val = held_out(count, validation_split)
    return max(0, min(round(count * test_split), count - 1 - n_val))


def test_problem(
    counts: Mapping[str, int], validation_split: float, test_split: float
) -> str | None:
    """Why `test_split` gives no test recordings for these per-class `counts`, or None."""
    if test_split == 0 or not counts:
        return None
    if sum(held_out_test(n, validation_split, test_split) for n in counts.values()) > 0:
        return None
    largest = max(counts.values())
    return (
        f"test_split={test_split:g} holds out no test recordings (the largest class has"
        f" {largest}); the job has no test evaluation. Use at least {0.5 / largest:.3g} or"
        " add recordings."
        if largest >= 3
        else f"test_split={test_split:g} holds out no test recordings: every class has fewer"
        " than 3 (one trains, one validates); the job has no test evaluation"
    )


def split_problem(counts: Mapping[str, int], validation_split: float) -> str | None:
    """Why `validation_split` cannot split recordings with these per-class `counts`, or None."""
    if validation_split == 0 or not counts:
        return None
    val = sum(held_out(n, validation_split) for n in counts.values())
    if val > 0:
        return None
    total = sum(counts.values())
    per_class = ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))
    largest = max(counts.values())
    fix = (
        f"use at least {0.5 / largest:.3g} (or 0.0 for no validation)"
        if largest >= 2
        else "every class has a single recording, so none can be held out; add recordings"
        " or use 0.0 for no validation"
    )
    return (
        f"validation_split={validation_split:g} leaves {total} recordings for training and 0"
        f" for validation (recordings per class: {per_class}); {fix}"
    )

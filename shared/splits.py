"""How many recordings of a class a job holds out for validation, and whether a split leaves
anything to validate on: one rule for the worker's split and the API's check at submission.

`validation_split` 0.0 asks for no validation (the monitored loss is then the training loss);
any other value must leave at least one recording in validation, or the job would report
validation metrics of nothing.
"""

from __future__ import annotations

from collections.abc import Mapping


def held_out(count: int, validation_split: float) -> int:
    """Of a class's `count` recordings, how many go to validation: the rounded share, and
    never the class's last recording (every class keeps one for training)."""
    return max(0, min(round(count * validation_split), count - 1))


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

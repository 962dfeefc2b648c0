"""Classification metrics of one split, in plain numpy: the confusion matrix, precision, recall,
F1 and support per class, macro-F1, and accuracy per SNR band.

Everything here is computed from counts that add up across data-parallel ranks (the matrix and
each band's totals), so each rank counts its own samples, the counts are summed, and
`summarise` turns the sums into the split's metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.events import ClassMetrics, SnrBand

BAND_DB = 5.0
"""Width of an SNR band: a recording of `snr_db` falls in [5k, 5k + 5) for the k that holds it."""

IntArray = npt.NDArray[np.int64]


def confusion_matrix(labels: npt.ArrayLike, predicted: npt.ArrayLike, classes: int) -> IntArray:
    """Counts of (true class row, predicted class column), shape (classes, classes)."""
    true = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(predicted, dtype=np.int64)
    flat = np.bincount(true * classes + pred, minlength=classes * classes)
    return flat.reshape(classes, classes)


def snr_bands(snrs: Sequence[float | None]) -> tuple[list[float], IntArray]:
    """The bands the recordings' SNRs fall in (their lower edges, ascending) and each
    recording's band index (-1 for a recording without an SNR)."""
    lows = [
        math.floor(s / BAND_DB) * BAND_DB if s is not None and math.isfinite(s) else None
        for s in snrs
    ]
    edges = sorted({low for low in lows if low is not None})
    index = {low: i for i, low in enumerate(edges)}
    return edges, np.array([index[low] if low is not None else -1 for low in lows], np.int64)


@dataclass(frozen=True)
class Summary:
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    accuracy_by_snr: list[SnrBand]


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def per_class(matrix: IntArray, classes: Sequence[str]) -> dict[str, ClassMetrics]:
    """Precision, recall, F1 and support of each class (0.0 where a ratio has nothing to
    divide by, as scikit-learn's `zero_division=0`)."""
    out: dict[str, ClassMetrics] = {}
    for i, name in enumerate(classes):
        tp = float(matrix[i, i])
        support = int(matrix[i].sum())
        precision = _ratio(tp, float(matrix[:, i].sum()))
        recall = _ratio(tp, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        out[name] = ClassMetrics(precision=precision, recall=recall, f1=f1, support=support)
    return out


def macro_f1(matrix: IntArray, metrics: dict[str, ClassMetrics]) -> float:
    """Mean F1 over the classes that occur in the split or its predictions (as scikit-learn
    averages over the labels it sees); 0.0 for an empty split."""
    seen = (matrix.sum(axis=1) + matrix.sum(axis=0)) > 0
    f1s = [m.f1 for m, present in zip(metrics.values(), seen, strict=True) if present]
    return float(np.mean(f1s)) if f1s else 0.0


def summarise(
    matrix: IntArray,
    classes: Sequence[str],
    band_lows: Sequence[float],
    band_total: npt.ArrayLike,
    band_correct: npt.ArrayLike,
) -> Summary:
    """The split's metrics from its (rank-summed) counts."""
    metrics = per_class(matrix, classes)
    totals = np.asarray(band_total, dtype=np.int64)
    correct = np.asarray(band_correct, dtype=np.int64)
    bands = [
        SnrBand(
            snr_db_min=low,
            snr_db_max=low + BAND_DB,
            accuracy=_ratio(float(correct[i]), float(totals[i])),
            support=int(totals[i]),
        )
        for i, low in enumerate(band_lows)
        if totals[i] > 0
    ]
    return Summary(
        accuracy=_ratio(float(np.trace(matrix)), float(matrix.sum())),
        macro_f1=macro_f1(matrix, metrics),
        per_class=metrics,
        accuracy_by_snr=bands,
    )

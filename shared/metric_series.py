"""The read-optimised form of a job's metric series: packed chunks with per-block rollups.

`training_metrics` rows are the source of truth; the recorder also keeps, in the same
transaction, every (job, phase) series as `metric_chunks` rows, because PostgreSQL needs ~15 ms
just to scan 50k rows here and a chart reads whole series. A chunk holds the points of one
epoch whose batch numbers share `(batch - 1) // CHUNK_BATCHES` (points without a batch: one
chunk per epoch), sorted in the series' canonical order, as packed little-endian records
(`POINT`), and a summary per block of `BLOCK_POINTS` consecutive points (`BLOCK`) from which a
long series is downsampled without reading its points.

Canonical order: (epoch, batch NULLS LAST, timestamp); chunks are ordered by (epoch, part),
which follows it. Points equal in all three keep the order in which they were recorded.

Downsampling to P buckets over a series of n points: a unit (a point, or a block when the
buckets average at least `BLOCKS_FROM` points) goes to bucket `start * P // n`, where `start`
is the position of its first point; a bucket reports the mean of each metric over its points
(NULLs skipped), the max `epoch_time_s` and timestamp, and the epoch and batch of its last
point. With single points as units these are exactly the bucket means of positions
`[ceil(b*n/P), ceil((b+1)*n/P))`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

METRICS = (
    "train_loss",
    "val_loss",
    "train_accuracy",
    "val_accuracy",
    "learning_rate",
    "gradient_norm",
    "epoch_time_s",
)
"""The float columns of a point, in record order; NaN stands for NULL."""

EPOCH_TIME = METRICS.index("epoch_time_s")

NO_BATCH = 2**31 - 1
"""`batch` of a point that has none (sorts last within its epoch, as NULLS LAST does)."""

CHUNK_BATCHES = 512
"""Batch numbers per chunk: bounds what one write rewrites (a chunk is ~36 KB at most)."""

BLOCK_POINTS = 32
"""Points per rollup block."""

BLOCKS_FROM = 8 * BLOCK_POINTS
"""Downsampling reads blocks instead of points once buckets average this many points, so a
bucket's size is off by at most 1/8 of it from the exact split."""

POINT = np.dtype([("epoch", "<i4"), ("batch", "<i4"), ("ts", "<i8"), ("m", "<f8", (7,))])
"""One point: epoch, batch (NO_BATCH for none), microseconds since 1970 (UTC), metrics."""

BLOCK = np.dtype(
    [
        ("n", "<i4"),
        ("epoch", "<i4"),
        ("batch", "<i4"),
        ("ts", "<i8"),
        ("sums", "<f8", (7,)),
        ("counts", "<i4", (7,)),
        ("epoch_time_max", "<f8"),
    ]
)
"""Rollup of up to BLOCK_POINTS points: count, last point's epoch and batch, max timestamp,
per-metric sums and non-NULL counts, max epoch_time_s (NaN when none)."""

_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def part_of(batch: int | None) -> int:
    """Which chunk of its epoch a point with this batch number goes into."""
    return NO_BATCH if batch is None else (batch - 1) // CHUNK_BATCHES


def micros(ts: datetime) -> int:
    """A naive UTC TIMESTAMP value → microseconds since 1970 (exact)."""
    return (ts - _EPOCH) // _MICROSECOND


def sort_points(points: npt.NDArray[np.void]) -> npt.NDArray[np.void]:
    """Points in canonical order; a stable sort, so equal keys keep their order."""
    if len(points) < 2:
        return points
    order = np.lexsort((points["ts"], points["batch"], points["epoch"]))
    return points[order]


def in_order(first: npt.NDArray[np.void], then: npt.NDArray[np.void]) -> bool:
    """Whether `then` (sorted) may simply follow `first` (sorted) in canonical order."""
    if not len(first) or not len(then):
        return True
    a, b = first[-1], then[0]
    return (int(a["epoch"]), int(a["batch"]), int(a["ts"])) <= (
        int(b["epoch"]),
        int(b["batch"]),
        int(b["ts"]),
    )


def merge(existing: npt.NDArray[np.void], new: npt.NDArray[np.void]) -> npt.NDArray[np.void]:
    """A chunk's points after `new` (any order) was recorded into it."""
    new = sort_points(new)
    if in_order(existing, new):
        return np.concatenate((existing, new)) if len(existing) else new
    return sort_points(np.concatenate((existing, new)))


def units(points: npt.NDArray[np.void], size: int) -> npt.NDArray[np.void]:
    """Rollups of consecutive runs of `size` points (the last may be shorter)."""
    n = len(points)
    out = np.zeros(-(-n // size), dtype=BLOCK)
    if not n:
        return out
    starts = np.arange(0, n, size)
    last = np.minimum(starts + size, n) - 1
    m = points["m"]
    valid = ~np.isnan(m)
    out["n"] = np.diff(np.append(starts, n))
    out["epoch"] = points["epoch"][last]
    out["batch"] = points["batch"][last]
    out["ts"] = np.maximum.reduceat(points["ts"], starts)
    out["sums"] = np.add.reduceat(np.where(valid, m, 0.0), starts, axis=0)
    out["counts"] = np.add.reduceat(valid.astype(np.int32), starts, axis=0)
    out["epoch_time_max"] = np.fmax.reduceat(m[:, EPOCH_TIME], starts)
    return out


def blocks(points: npt.NDArray[np.void]) -> npt.NDArray[np.void]:
    """A chunk's rollup blocks."""
    return units(points, BLOCK_POINTS)


def downsample(units_: npt.NDArray[np.void], buckets: int) -> npt.NDArray[np.void]:
    """Consecutive units (points as 1-point units, or blocks) → at most `buckets` rollups."""
    n = int(units_["n"].sum())
    if not len(units_) or n == 0:
        return np.zeros(0, dtype=BLOCK)
    starts = np.concatenate(([0], np.cumsum(units_["n"][:-1], dtype=np.int64)))
    bucket = starts * buckets // n
    first = np.flatnonzero(np.diff(bucket, prepend=-1))
    last = np.append(first[1:], len(units_)) - 1
    out = np.zeros(len(first), dtype=BLOCK)
    out["n"] = np.add.reduceat(units_["n"], first)
    out["epoch"] = units_["epoch"][last]
    out["batch"] = units_["batch"][last]
    out["ts"] = np.maximum.reduceat(units_["ts"], first)
    out["sums"] = np.add.reduceat(units_["sums"], first, axis=0)
    out["counts"] = np.add.reduceat(units_["counts"], first, axis=0)
    out["epoch_time_max"] = np.fmax.reduceat(units_["epoch_time_max"], first)
    return out


def means(rollups: npt.NDArray[np.void]) -> npt.NDArray[np.float64]:
    """Per-metric means of rollups, NaN where a metric had no value; epoch_time_s is the max."""
    counts = rollups["counts"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(counts > 0, rollups["sums"] / np.maximum(counts, 1), np.nan)
    out[:, EPOCH_TIME] = rollups["epoch_time_max"]
    return out

"""Metric series as the endpoint's JSON, built from packed columns (numpy) without a Python
object per value where it can be avoided: a chart of a million points is ~100 MB of JSON.

The text matches what PostgreSQL builds for the same rows (services/api/metrics.py,
`rows_query`): the same keys in the same order, NULL as null, timestamps truncated to
milliseconds as ISO-8601 with a `Z`.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from shared.metric_series import METRICS, NO_BATCH, means

COLUMNS = ("epoch", "batch", "phase", *METRICS, "timestamp")
"""Keys of a row, in order (as the SQL path writes them)."""

_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Series:
    """A (possibly downsampled) series, column by column."""

    phase: str
    epoch: npt.NDArray[np.int32]
    batch: npt.NDArray[np.int32]
    """NO_BATCH where the point has none."""
    metrics: npt.NDArray[np.float64]
    """(n, 7) in `METRICS` order; NaN is NULL."""
    ts: npt.NDArray[np.int64]
    """Microseconds since 1970, UTC."""

    @classmethod
    def of_points(cls, phase: str, points: npt.NDArray[np.void]) -> Series:
        return cls(phase, points["epoch"], points["batch"], points["m"], points["ts"])

    @classmethod
    def of_rollups(cls, phase: str, rollups: npt.NDArray[np.void]) -> Series:
        return cls(phase, rollups["epoch"], rollups["batch"], means(rollups), rollups["ts"])

    def __len__(self) -> int:
        return len(self.epoch)


def iso_millis(us: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """Microseconds since 1970 → (n, 24) ASCII `YYYY-MM-DDTHH:MM:SS.mmmZ`, vectorised (the
    days-to-civil conversion of H. Hinnant's date algorithms); truncated like to_char's MS."""
    ms = us // 1000
    days, in_day = np.divmod(ms, 86_400_000)
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    out = np.empty((len(us), 24), dtype=np.uint8)
    out[:] = np.frombuffer(b"0000-00-00T00:00:00.000Z", dtype=np.uint8)
    fields = (
        (year, 0, 4),
        (month, 5, 2),
        (day, 8, 2),
        (in_day // 3_600_000, 11, 2),
        (in_day // 60_000 % 60, 14, 2),
        (in_day // 1000 % 60, 17, 2),
        (in_day % 1000, 20, 3),
    )
    for value, at, width in fields:
        for k in range(width):
            out[:, at + width - 1 - k] += (value // 10**k % 10).astype(np.uint8)
    return out


def _timestamps_json(us: npt.NDArray[np.int64]) -> bytes:
    if not len(us):
        return b"[]"
    text = np.empty((len(us), 27), dtype=np.uint8)
    text[:, 0] = text[:, 25] = ord('"')
    text[:, 1:25] = iso_millis(us)
    text[:, 26] = ord(",")
    return b"[" + text.tobytes()[:-1] + b"]"


def _nulls(n: int) -> bytes:
    return b"[" + b",".join([b"null"] * n) + b"]"


def _floats_json(values: npt.NDArray[np.float64]) -> bytes:
    if len(values) and np.isnan(values).all():
        return _nulls(len(values))
    return _encode(values.tolist())  # NaN encodes as null


def _batches(batch: npt.NDArray[np.int32]) -> list[int | None]:
    values: list[int | None] = list(batch.tolist())
    if (batch == NO_BATCH).any():
        values = [None if b == NO_BATCH else b for b in values]
    return values


def columns_json(series: Series) -> bytes:
    """`{"epoch": [...], ..., "timestamp": [...]}`: one array per field."""
    n = len(series)
    phase = b'"' + series.phase.encode() + b'"'
    parts = [
        b'"epoch":' + _encode(series.epoch.tolist()),
        b'"batch":' + _encode(_batches(series.batch)),
        b'"phase":[' + b",".join([phase] * n) + b"]",
    ]
    parts += [
        b'"' + name.encode() + b'":' + _floats_json(series.metrics[:, j])
        for j, name in enumerate(METRICS)
    ]
    parts.append(b'"timestamp":' + _timestamps_json(series.ts))
    return b"{" + b",".join(parts) + b"}"


class _Row(msgspec.Struct):
    epoch: int
    batch: int | None
    phase: str
    train_loss: float | None
    val_loss: float | None
    train_accuracy: float | None
    val_accuracy: float | None
    learning_rate: float | None
    gradient_norm: float | None
    epoch_time_s: float | None
    timestamp: str


def rows_json(series: Series) -> bytes:
    """`[{"epoch": ..., ..., "timestamp": ...}, ...]`: one object per point."""
    n = len(series)
    if not n:
        return b"[]"
    text = iso_millis(series.ts).tobytes().decode()
    stamps = [text[i : i + 24] for i in range(0, 24 * n, 24)]
    metric_columns = [series.metrics[:, j].tolist() for j in range(len(METRICS))]
    phases = [series.phase] * n
    rows = [
        _Row(*values)
        for values in zip(
            series.epoch.tolist(),
            _batches(series.batch),
            phases,
            *metric_columns,
            stamps,
            strict=True,
        )
    ]
    return _encode(rows)

"""Checks of the read-optimised metric series against the rows, and a plain-Python reference
of the downsampled series (no numpy, so it shares no code with what it checks)."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import numpy as np

from shared.metric_series import BLOCK, BLOCK_POINTS, METRICS, NO_BATCH, POINT, part_of

ROWS_SQL = (
    "SELECT epoch, batch, timestamp, " + ", ".join(METRICS) + " FROM training_metrics"
    " WHERE training_job_id = $1 AND phase = $2 ORDER BY epoch, batch, timestamp, id"
)

Point = tuple[Any, ...]
"""(epoch, batch or None, timestamp, *metrics) with None for NULL."""


async def rows_of(conn: asyncpg.Connection, job: uuid.UUID, phase: str) -> list[Point]:
    return [tuple(r) for r in await conn.fetch(ROWS_SQL, job, phase)]


def _micros(ts: datetime) -> int:
    delta = ts - datetime(1970, 1, 1)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _point(record: Any) -> Point:
    batch = int(record["batch"])
    metrics = tuple(None if math.isnan(v) else float(v) for v in record["m"])
    return (int(record["epoch"]), None if batch == NO_BATCH else batch, int(record["ts"]), *metrics)


async def chunks_of(conn: asyncpg.Connection, job: uuid.UUID, phase: str) -> list[Point]:
    """The series as the chunks hold it, checking each chunk's own invariants on the way."""
    out: list[Point] = []
    for chunk in await conn.fetch(
        "SELECT epoch, part, n, points, blocks FROM metric_chunks"
        " WHERE training_job_id = $1 AND phase = $2 ORDER BY epoch, part",
        job,
        phase,
    ):
        points = np.frombuffer(chunk["points"], dtype=POINT)
        assert len(points) == chunk["n"] > 0
        for record in points:
            assert int(record["epoch"]) == chunk["epoch"]
            batch = int(record["batch"])
            assert part_of(None if batch == NO_BATCH else batch) == chunk["part"]
        blocks = np.frombuffer(chunk["blocks"], dtype=BLOCK)
        assert [int(b["n"]) for b in blocks] == [
            min(BLOCK_POINTS, len(points) - s) for s in range(0, len(points), BLOCK_POINTS)
        ]
        for b, start in zip(blocks, range(0, len(points), BLOCK_POINTS), strict=True):
            values = points["m"][start : start + BLOCK_POINTS]
            for j in range(len(METRICS)):
                present = [float(v) for v in values[:, j] if not math.isnan(v)]
                assert int(b["counts"][j]) == len(present)
                assert float(b["sums"][j]) == _approx(math.fsum(present))
        out += [_point(p) for p in points]
    return out


def _approx(value: float) -> Any:
    import pytest

    return pytest.approx(value, rel=1e-12, abs=1e-12)


def as_comparable(rows: list[Point]) -> list[Point]:
    """Rows with timestamps in microseconds, as the chunks hold them."""
    return [(e, b, _micros(ts), *m) for e, b, ts, *m in rows]


async def assert_series_match_rows(conn: asyncpg.Connection) -> int:
    """Every (job, phase) series in the chunks equals its rows (same values, same order), and
    no series is in one but not the other; returns how many series were compared."""
    from_rows = {
        (r[0], r[1])
        for r in await conn.fetch("SELECT DISTINCT training_job_id, phase FROM training_metrics")
    }
    from_chunks = {
        (r[0], r[1])
        for r in await conn.fetch("SELECT DISTINCT training_job_id, phase FROM metric_chunks")
    }
    assert from_chunks == from_rows
    for job, phase in sorted(from_rows):
        assert await chunks_of(conn, job, phase) == as_comparable(await rows_of(conn, job, phase))
    return len(from_rows)


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def reference_downsample(rows: list[Point], buckets: int, block: int) -> list[dict[str, Any]]:
    """The downsampled series of shared/metric_series.py computed from rows: units of `block`
    consecutive points of one chunk (1: single points) go to bucket `start * buckets // n`."""
    n = len(rows)
    units: list[list[Point]] = []
    for i, row in enumerate(rows):
        chunk = (row[0], part_of(row[1]))
        previous = rows[i - 1] if i else None
        fresh = previous is None or (previous[0], part_of(previous[1])) != chunk
        if fresh:
            local = 0
        if fresh or local % block == 0:
            units.append([])
        units[-1].append(row)
        local += 1
    grouped: dict[int, list[Point]] = {}
    start = 0
    for unit in units:
        grouped.setdefault(start * buckets // n, []).extend(unit)
        start += len(unit)
    out = []
    for _, points in sorted(grouped.items()):
        entry: dict[str, Any] = {"epoch": points[-1][0], "batch": points[-1][1], "phase": None}
        for j, name in enumerate(METRICS):
            values = [p[3 + j] for p in points if p[3 + j] is not None]
            if name == "epoch_time_s":
                entry[name] = max(values) if values else None
            else:
                entry[name] = sum(values) / len(values) if values else None
        entry["timestamp"] = iso(max(p[2] for p in points))
        out.append(entry)
    return out

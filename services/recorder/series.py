"""Keeping `metric_chunks` (see `shared.metric_series`) equal to the metric rows.

Called by `Store.write` after a batch's new rows are COPYed, in the same transaction, with
exactly those rows: a redelivered event has no new rows, so it changes no chunk either, and the
chunks commit or roll back with the rows. Per batch: the jobs concerned are locked (in id
order, so concurrent recorders serialise per job instead of losing each other's points), the
touched chunks are read, merged with the new points in Python, and written back whole with
their rollups. A (job, phase) that has rows but no chunks yet — rows from before this form
existed, or written by something other than the recorder — is rebuilt from its rows.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from shared.metric_series import (
    NO_BATCH,
    POINT,
    blocks,
    merge,
    micros,
    part_of,
    sort_points,
)

from .entries import MetricRow

ChunkKey = tuple[uuid.UUID, str, int, int]
"""(job id, phase, epoch, part)."""

# Positions in the tuples of `entries.METRIC_COLUMNS`.
_TS, _JOB, _EPOCH, _BATCH, _PHASE = 0, 2, 3, 4, 11
_FLOATS = slice(5, 11)
_EPOCH_TIME = 12

LOCK_JOBS_SQL = (
    "SELECT id FROM training_jobs WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE"
)

STARTED_SQL = """
SELECT k.job, k.phase, EXISTS (
    SELECT 1 FROM metric_chunks c WHERE c.training_job_id = k.job AND c.phase = k.phase
) AS started
FROM unnest($1::uuid[], $2::text[]) AS k(job, phase)
"""

TOUCHED_SQL = """
SELECT c.training_job_id, c.phase, c.epoch, c.part, c.points
FROM metric_chunks c
JOIN unnest($1::uuid[], $2::text[], $3::int4[], $4::int4[]) AS k(job, phase, epoch, part)
  ON c.training_job_id = k.job AND c.phase = k.phase AND c.epoch = k.epoch AND c.part = k.part
"""

UPSERT_SQL = """
INSERT INTO metric_chunks (training_job_id, phase, epoch, part, n, points, blocks)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (training_job_id, phase, epoch, part) DO UPDATE
SET n = EXCLUDED.n, points = EXCLUDED.points, blocks = EXCLUDED.blocks
"""

ROWS_SQL = """
SELECT epoch, batch, timestamp, train_loss, val_loss, train_accuracy, val_accuracy,
       learning_rate, gradient_norm, epoch_time_s
FROM training_metrics WHERE training_job_id = $1 AND phase = $2
ORDER BY epoch, batch, timestamp, id
"""


def as_points(rows: list[Any]) -> npt.NDArray[np.void]:
    """Metric row tuples (`METRIC_COLUMNS` order) → unsorted POINT records."""
    out = np.empty(len(rows), dtype=POINT)
    out["epoch"] = [r[_EPOCH] for r in rows]
    out["batch"] = [NO_BATCH if r[_BATCH] is None else r[_BATCH] for r in rows]
    out["ts"] = [micros(r[_TS]) for r in rows]
    out["m"] = np.array([(*r[_FLOATS], r[_EPOCH_TIME]) for r in rows], dtype=np.float64)
    return out


def _group(rows: list[MetricRow]) -> dict[ChunkKey, list[MetricRow]]:
    groups: dict[ChunkKey, list[MetricRow]] = defaultdict(list)
    for row in rows:
        # The row's job id is asyncpg's UUID, a uuid.UUID subclass: hashes and sorts alike.
        groups[(row[_JOB], row[_PHASE], row[_EPOCH], part_of(row[_BATCH]))].append(row)
    return groups


def _chunk_params(key: ChunkKey, points: npt.NDArray[np.void]) -> tuple[Any, ...]:
    return (*key, len(points), points.tobytes(), blocks(points).tobytes())


async def record(conn: asyncpg.Connection, rows: list[MetricRow]) -> int:
    """Fold a batch's newly inserted metric rows into their chunks; returns chunks written."""
    if not rows:
        return 0
    groups = _group(rows)
    jobs = sorted({key[0] for key in groups})
    await conn.execute(LOCK_JOBS_SQL, jobs)
    series = sorted({(key[0], key[1]) for key in groups})
    started = await conn.fetch(STARTED_SQL, [s[0] for s in series], [s[1] for s in series])
    rebuild: list[tuple[uuid.UUID, str]] = []
    for record_ in started:
        if record_["started"]:
            continue
        job, phase = record_["job"], record_["phase"]
        new = sum(len(rows_) for key, rows_ in groups.items() if key[:2] == (job, phase))
        stored = await conn.fetchval(
            "SELECT count(*) FROM training_metrics WHERE training_job_id = $1 AND phase = $2",
            job,
            phase,
        )
        if stored != new:
            rebuild.append((job, phase))
    for job, phase in rebuild:
        await rebuild_series(conn, job, phase)
    skip = set(rebuild)
    touched = [key for key in groups if key[:2] not in skip]
    if not touched:
        return 0
    existing = {
        (r[0], r[1], r[2], r[3]): np.frombuffer(r[4], dtype=POINT)
        for r in await conn.fetch(
            TOUCHED_SQL,
            [k[0] for k in touched],
            [k[1] for k in touched],
            [k[2] for k in touched],
            [k[3] for k in touched],
        )
    }
    params = []
    for key in touched:
        new_points = as_points(groups[key])
        old = existing.get(key)
        points = sort_points(new_points) if old is None else merge(old, new_points)
        params.append(_chunk_params(key, points))
    await conn.executemany(UPSERT_SQL, params)
    return len(params)


async def rebuild_series(conn: asyncpg.Connection, job: uuid.UUID, phase: str) -> int:
    """Replace a series' chunks by ones built from its rows; returns the chunks written."""
    records = await conn.fetch(ROWS_SQL, job, phase)
    await conn.execute(
        "DELETE FROM metric_chunks WHERE training_job_id = $1 AND phase = $2", job, phase
    )
    if not records:
        return 0
    points = np.empty(len(records), dtype=POINT)
    points["epoch"] = [r[0] for r in records]
    points["batch"] = [NO_BATCH if r[1] is None else r[1] for r in records]
    points["ts"] = [micros(r[2]) for r in records]
    points["m"] = np.array([tuple(r)[3:] for r in records], dtype=np.float64)
    keys = [(job, phase, int(p["epoch"]), part_of(_batch(int(p["batch"])))) for p in points]
    params = []
    start = 0
    for i in range(1, len(points) + 1):
        if i == len(points) or keys[i] != keys[start]:
            params.append(_chunk_params(keys[start], points[start:i]))
            start = i
    await conn.executemany(UPSERT_SQL, params)
    return len(params)


def _batch(value: int) -> int | None:
    return None if value == NO_BATCH else value

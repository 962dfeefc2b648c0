"""The metrics endpoint's reads: from the read-optimised chunks, or from the rows.

A (job, phase) series that the recorder keeps in `metric_chunks` (shared/metric_series.py) is
served from it: the chunks' list, then the packed points of the chunks needed, or — for a
downsampled long series — only their rollup blocks, under one snapshot. A series without chunks
(rows written by something other than the recorder) is served from `training_metrics` by one
SQL statement whose plan does not depend on planner statistics: one index scan of the job's
rows and window functions, never a subquery per row (a fresh table without ANALYZE once turned
the downsampling query quadratic). Both give the same JSON for the same rows.

Series order: (epoch, batch NULLS LAST, timestamp). `epoch`: the most recent `limit` epochs
(100 when None). Batch phases: the most recent `limit` points (all when None), downsampled to at
most `points` buckets when given (see shared/metric_series.py for the buckets).
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import msgspec
import numpy as np

from services.api.metric_json import COLUMNS, Series, columns_json, rows_json
from shared.metric_series import BLOCK, BLOCKS_FROM, NO_BATCH, POINT, downsample, units

CHUNKS_SQL = (
    "SELECT epoch, part, n FROM metric_chunks WHERE training_job_id = $1 AND phase = $2"
    " ORDER BY epoch, part"
)
_FROM_CHUNK = (
    " FROM metric_chunks WHERE training_job_id = $1 AND phase = $2 AND (epoch, part) >= ($3, $4)"
    " ORDER BY epoch, part"
)

_ORDER = "epoch, batch, timestamp, id"
_BACKWARDS = "epoch DESC, batch DESC NULLS FIRST, timestamp DESC, id DESC"
_TS = 'to_char(timestamp, \'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\')'


def rows_query(
    job: uuid.UUID, phase: str, limit: int | None, points: int | None, columns: bool
) -> tuple[str, list[Any]]:
    """The SQL (and its arguments) that builds the JSON from `training_metrics` rows."""
    where = "training_job_id = $1 AND phase = $2"
    args: list[Any] = [job, phase]
    if limit is None:
        series = f"SELECT * FROM training_metrics WHERE {where}"
    else:
        args.append(limit)
        series = f"SELECT * FROM training_metrics WHERE {where} ORDER BY {_BACKWARDS} LIMIT $3"
    if points is None:
        series = f"SELECT * FROM ({series}) s ORDER BY {_ORDER}"
    else:
        args.append(points)
        # Position and length from window functions over the one scan: the bucket is
        # arithmetic on them, so the plan is the same with or without statistics.
        positioned = (
            f"SELECT s.*, (row_number() OVER (ORDER BY {_ORDER}) - 1) * ${len(args)}"
            f" / count(*) OVER () AS bucket FROM ({series}) s"
        )
        last = f"max(ARRAY[epoch, coalesce(batch, {NO_BATCH})])"
        series = (
            f"SELECT ({last})[1] AS epoch, nullif(({last})[2], {NO_BATCH}) AS batch,"
            " max(phase) AS phase, avg(train_loss) AS train_loss, avg(val_loss) AS val_loss,"
            " avg(train_accuracy) AS train_accuracy, avg(val_accuracy) AS val_accuracy,"
            " avg(learning_rate) AS learning_rate, avg(gradient_norm) AS gradient_norm,"
            " max(epoch_time_s) AS epoch_time_s, max(timestamp) AS timestamp"
            f" FROM ({positioned}) b GROUP BY bucket ORDER BY bucket"
        )
    fields = [c for c in COLUMNS if c != "timestamp"]
    if columns:
        arrays = ", ".join(f"'{c}', coalesce(array_agg({c}), '{{}}')" for c in fields)
        query = (
            f"SELECT json_build_object({arrays}, 'timestamp',"
            f" coalesce(array_agg({_TS}), '{{}}'))::text FROM ({series}) rows"
        )
    else:
        query = (
            "SELECT coalesce(json_agg(r), '[]'::json)::text FROM (SELECT"
            f" {', '.join(fields)}, {_TS} AS timestamp FROM ({series}) rows) r"
        )
    return query, args


async def _packed(
    conn: asyncpg.Connection,
    job: uuid.UUID,
    phase: str,
    chunks: list[asyncpg.Record],
    limit: int | None,
    points: int | None,
) -> Series:
    total = sum(c["n"] for c in chunks)
    if points is not None and limit is None and total >= BLOCKS_FROM * points:
        parts = await conn.fetch(
            "SELECT blocks" + _FROM_CHUNK, job, phase, chunks[0]["epoch"], chunks[0]["part"]
        )
        blocks = np.frombuffer(b"".join(r[0] for r in parts), dtype=BLOCK)
        return Series.of_rollups(phase, downsample(blocks, points))
    first, covered = 0, total
    if limit is not None:
        # The newest chunks that hold the last `limit` points.
        first = len(chunks)
        covered = 0
        while first > 0 and covered < limit:
            first -= 1
            covered += chunks[first]["n"]
    start = chunks[first]
    parts = await conn.fetch(
        "SELECT points" + _FROM_CHUNK, job, phase, start["epoch"], start["part"]
    )
    series = np.frombuffer(b"".join(r[0] for r in parts), dtype=POINT)
    if limit is not None:
        series = series[-limit:]
    if points is None:
        return Series.of_points(phase, series)
    return Series.of_rollups(phase, downsample(units(series, 1), points))


async def metrics_json(
    pool: asyncpg.Pool,
    job_id: str,
    phase: str,
    limit: int | None,
    points: int | None,
    columns: bool = False,
) -> bytes:
    """The series as JSON: a list of rows, or with `columns` one array per field (what chart
    libraries take; several times cheaper to build and to send)."""
    job = uuid.UUID(job_id)
    if phase == "epoch":
        limit = limit or 100
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        chunks = await conn.fetch(CHUNKS_SQL, job, phase)
        if not chunks:
            query, args = rows_query(job, phase, limit, points, columns)
            return str(await conn.fetchval(query, *args)).encode()
        series = await _packed(conn, job, phase, chunks, limit, points)
    return columns_json(series) if columns else rows_json(series)


async def recent_epochs(pool: asyncpg.Pool, job_id: str, limit: int = 10) -> list[Any]:
    """The job's last `limit` epoch rows, for the job's detail view."""
    return list(msgspec.json.decode(await metrics_json(pool, job_id, "epoch", limit, None)))

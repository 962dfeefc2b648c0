"""The API's reads and writes of jobs, metrics and events (SQL in one place)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import msgspec

from shared.status import JobStatus


async def list_jobs(
    pool: asyncpg.Pool, status: JobStatus | None, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """One page of jobs, newest first, and the total matching the filter."""
    where, args = ("WHERE status = $1", [status.value]) if status else ("", [])
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT * FROM training_jobs {where} ORDER BY created_at DESC, id"
            f" LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
            *args,
            limit,
            offset,
        )
        total = await conn.fetchval(f"SELECT count(*) FROM training_jobs {where}", *args)
    return list(rows), int(total)


async def delete_job(pool: asyncpg.Pool, job_id: str) -> None:
    """Rows of the job: metrics and events go with it (ON DELETE CASCADE)."""
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM training_jobs WHERE id = $1", uuid.UUID(job_id))


_METRIC_COLUMNS = (
    "epoch, batch, phase, train_loss, val_loss, train_accuracy, val_accuracy,"
    " learning_rate, gradient_norm, epoch_time_s"
)


_COLUMN_NAMES = [c.strip() for c in _METRIC_COLUMNS.split(",")]


async def metrics_json(
    pool: asyncpg.Pool,
    job_id: str,
    phase: str,
    limit: int | None,
    points: int | None,
    columns: bool = False,
) -> bytes:
    """The metric rows as a JSON array, built by PostgreSQL (no per-row Python work).

    `epoch`: the most recent `limit` epochs (100 when None), in epoch order. Batch phases: the
    most recent `limit` points (all when None), downsampled to at most `points` bucket means
    when given. A whole series is read in index order, so nothing is sorted. `columns`: one
    array per field instead of one object per row (what chart libraries take; several times
    cheaper to build and to send).
    """
    job = uuid.UUID(job_id)
    order = "epoch, timestamp" if phase == "epoch" else "epoch, batch"
    backwards = "epoch DESC, timestamp DESC" if phase == "epoch" else "epoch DESC, batch DESC"
    if phase == "epoch":
        limit = limit or 100
    where = "training_job_id = $1 AND phase = $2"
    args: list[Any] = [job, phase]
    if limit is None:
        series = f"SELECT * FROM training_metrics WHERE {where} ORDER BY {order}"
        count = f"(SELECT count(*) FROM training_metrics WHERE {where})"
    else:
        series = (
            f"SELECT * FROM (SELECT * FROM training_metrics WHERE {where}"
            f" ORDER BY {backwards} LIMIT $3) newest ORDER BY {order}"
        )
        count = f"least($3, (SELECT count(*) FROM training_metrics WHERE {where}))"
        args.append(limit)
    if points is not None and phase != "epoch":
        # Bucket means over the series, so a chart of any length costs `points` rows.
        args.append(points)
        if limit is None:
            # The whole series: a point's position is arithmetic on (epoch, batch), every
            # epoch having the same number of batches, so no window over the rows is needed.
            source = (
                f"(SELECT m.*, ((m.epoch - 1)::bigint * c.per_epoch + m.batch - 1)"
                f" * ${len(args)} / c.n AS bucket FROM training_metrics m,"
                f" (SELECT count(*) AS n, max(batch) AS per_epoch FROM training_metrics"
                f" WHERE {where}) c WHERE m.training_job_id = $1 AND m.phase = $2)"
            )
        else:
            source = (
                f"(SELECT s.*, (row_number() OVER () - 1) * ${len(args)} / {count} AS bucket"
                f" FROM ({series}) s)"
            )
        series = (
            "SELECT max(epoch) AS epoch, max(batch) AS batch, max(phase) AS phase,"
            " avg(train_loss) AS train_loss, avg(val_loss) AS val_loss,"
            " avg(train_accuracy) AS train_accuracy, avg(val_accuracy) AS val_accuracy,"
            " avg(learning_rate) AS learning_rate, avg(gradient_norm) AS gradient_norm,"
            " max(epoch_time_s) AS epoch_time_s, max(timestamp) AS timestamp"
            f" FROM {source} b GROUP BY bucket ORDER BY bucket"
        )
    ts = 'to_char(timestamp, \'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\')'
    if columns:
        arrays = ", ".join(f"'{c}', coalesce(array_agg({c}), '{{}}')" for c in _COLUMN_NAMES)
        query = (
            f"SELECT json_build_object({arrays}, 'timestamp',"
            f" coalesce(array_agg({ts}), '{{}}'))::text FROM ({series}) rows"
        )
    else:
        query = (
            f"SELECT coalesce(json_agg(r), '[]'::json)::text FROM (SELECT {_METRIC_COLUMNS},"
            f" {ts} AS timestamp FROM ({series}) rows) r"
        )
    async with pool.acquire() as conn:
        text = await conn.fetchval(query, *args)
    return str(text).encode()


async def recent_epochs(pool: asyncpg.Pool, job_id: str, limit: int = 10) -> list[Any]:
    return list(msgspec.json.decode(await metrics_json(pool, job_id, "epoch", limit, None)))

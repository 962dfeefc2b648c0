"""The API's reads and writes of job rows (SQL in one place; metric series: `metrics.py`)."""

from __future__ import annotations

import uuid

import asyncpg

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

"""The API's reads and writes of jobs, metrics and events (SQL in one place)."""

from __future__ import annotations

import uuid

import asyncpg
import msgspec
import redis.asyncio as aredis

from shared import keys
from shared.events import parse_event_id
from shared.jobs import utcnow
from shared.status import JobStatus, sql_rank_case


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


async def mark_status(
    pool: asyncpg.Pool, job_id: str, status: JobStatus, error_message: str | None = None
) -> asyncpg.Record | None:
    """Move a job to `status` if the forward-only rule allows it; returns the row as it is now."""
    rank = sql_rank_case("status")
    new_rank = sql_rank_case("$2::varchar")
    terminal = status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
    async with pool.acquire() as conn:
        await conn.execute(
            f"UPDATE training_jobs SET status = $2, updated_at = $3,"
            f" completed_at = CASE WHEN $4 THEN coalesce(completed_at, $3) ELSE completed_at END,"
            f" error_message = coalesce($5, error_message)"
            f" WHERE id = $1 AND {rank} < 3 AND {new_rank} >= {rank}",
            uuid.UUID(job_id),
            status.value,
            utcnow(),
            terminal,
            error_message,
        )
        return await conn.fetchrow("SELECT * FROM training_jobs WHERE id = $1", uuid.UUID(job_id))


async def resumed(pool: asyncpg.Pool, job_id: str, task_id: str) -> asyncpg.Record | None:
    """A paused job queued again: `running` (it keeps its place among active jobs) under its
    new queue task id (`celery_task_id` always names the job's current queue task)."""
    async with pool.acquire() as conn:
        return await conn.fetchrow(
            "UPDATE training_jobs SET status = 'running', celery_task_id = $2, updated_at = $3"
            " WHERE id = $1 AND status = 'paused' RETURNING *",
            uuid.UUID(job_id),
            task_id,
            utcnow(),
        )


async def delete_job(pool: asyncpg.Pool, job_id: str) -> None:
    """Rows of the job: metrics and events go with it (ON DELETE CASCADE)."""
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM training_jobs WHERE id = $1", uuid.UUID(job_id))


class StoredEvent(msgspec.Struct):
    event_id: str
    event: msgspec.Raw


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def events_after(
    pool: asyncpg.Pool,
    client: aredis.Redis,
    job_id: str,
    after: str | None,
    limit: int,
) -> list[StoredEvent]:
    """A job's events after `after`, in order, with no gap even while the recorder lags.

    The job's Redis stream holds the newest window of events exactly as emitted; the database
    holds everything the recorder has committed. Events older than the window come from the
    database, the rest from the stream.
    """
    after_key = parse_event_id(after) if after else (-1, 0)
    stream = keys.job_stream(job_id)
    oldest = await client.xrange(stream, count=1)
    window_start = parse_event_id(_text(oldest[0][0])) if oldest else None
    out: list[StoredEvent] = []
    if window_start is None or after_key < window_start:
        upper = window_start or (2**62, 0)
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT event_id, payload::text AS payload FROM training_events"
                " WHERE training_job_id = $1 AND (id_ms, id_seq) > ($2, $3)"
                " AND (id_ms, id_seq) < ($4, $5) ORDER BY id_ms, id_seq LIMIT $6",
                uuid.UUID(job_id),
                *after_key,
                *upper,
                limit,
            )
        out = [StoredEvent(r["event_id"], msgspec.Raw(r["payload"].encode())) for r in rows]
    if window_start is not None and len(out) < limit:
        start = f"({after}" if after and after_key >= window_start else "-"
        for entry_id, fields in await client.xrange(stream, min=start, count=limit - len(out)):
            out.append(StoredEvent(_text(entry_id), msgspec.Raw(fields[b"data"])))
    return out

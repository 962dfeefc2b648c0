"""The job record: creating it and reading it, shared by the API and the worker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.config import TrainingConfig


def utcnow() -> datetime:
    """Naive UTC, the form every TIMESTAMP column holds."""
    return datetime.now(UTC).replace(tzinfo=None)


async def insert_job(
    conn: asyncpg.Connection,
    job_name: str,
    config: TrainingConfig,
    *,
    job_id: str | None = None,
    task_id: str | None = None,
) -> asyncpg.Record:
    """Insert a job in status `queued` and return its row."""
    job_id = job_id or str(uuid.uuid4())
    task_id = task_id or str(uuid.uuid4())
    row = await conn.fetchrow(
        "INSERT INTO training_jobs (id, job_name, celery_task_id, status, created_at, updated_at,"
        " config, total_epochs, model_architecture, dataset)"
        " VALUES ($1, $2, $3, 'queued', $4, $4, $5, $6, $7, $8) RETURNING *",
        uuid.UUID(job_id),
        job_name,
        task_id,
        utcnow(),
        config.to_dict(),
        config.epochs,
        config.model_architecture,
        config.dataset,
    )
    assert row is not None
    return row


async def fetch_job(conn: asyncpg.Connection, job_id: str) -> asyncpg.Record | None:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        return None
    return await conn.fetchrow("SELECT * FROM training_jobs WHERE id = $1", key)


def job_config(row: asyncpg.Record | dict[str, Any]) -> TrainingConfig:
    """The stored config of a job, as validated at submission."""
    import msgspec

    return msgspec.convert(row["config"], TrainingConfig)

"""The schema: the seed's tables column for column, and migrations that can run again and again."""

from __future__ import annotations

import asyncio

import asyncpg

from shared.db import connect, migrate
from shared.settings import Settings

SEED_TRAINING_JOBS = {
    "id": "uuid",
    "job_name": "character varying",
    "celery_task_id": "character varying",
    "status": "character varying",
    "created_at": "timestamp without time zone",
    "started_at": "timestamp without time zone",
    "completed_at": "timestamp without time zone",
    "config": "jsonb",
    "current_epoch": "integer",
    "total_epochs": "integer",
    "progress_percent": "double precision",
    "train_loss": "double precision",
    "val_loss": "double precision",
    "train_accuracy": "double precision",
    "val_accuracy": "double precision",
    "learning_rate": "double precision",
    "best_epoch": "integer",
    "best_val_loss": "double precision",
    "checkpoint_path": "character varying",
    "onnx_model_path": "character varying",
    "mlflow_run_id": "character varying",
    "error_message": "text",
    "dataset_size": "integer",
    "train_samples": "integer",
    "val_samples": "integer",
    "model_architecture": "character varying",
}
SEED_TRAINING_METRICS = {
    "timestamp": "timestamp without time zone",
    "id": "uuid",
    "training_job_id": "uuid",
    "epoch": "integer",
    "batch": "integer",
    "train_loss": "double precision",
    "val_loss": "double precision",
    "train_accuracy": "double precision",
    "val_accuracy": "double precision",
    "learning_rate": "double precision",
    "gradient_norm": "double precision",
    "phase": "character varying",
}


async def _columns(db: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = $1 ORDER BY ordinal_position",
        table,
    )
    return {r["column_name"]: r["data_type"] for r in rows}


async def test_seed_tables_column_for_column(db: asyncpg.Connection) -> None:
    jobs = await _columns(db, "training_jobs")
    assert list(jobs)[: len(SEED_TRAINING_JOBS)] == list(SEED_TRAINING_JOBS)
    assert {k: jobs[k] for k in SEED_TRAINING_JOBS} == SEED_TRAINING_JOBS
    metrics = await _columns(db, "training_metrics")
    assert list(metrics)[: len(SEED_TRAINING_METRICS)] == list(SEED_TRAINING_METRICS)
    assert {k: metrics[k] for k in SEED_TRAINING_METRICS} == SEED_TRAINING_METRICS
    pk = await db.fetch(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'training_metrics'::regclass"
        " AND i.indisprimary"
    )
    assert {r["attname"] for r in pk} == {"timestamp", "id"}


async def test_migrations_run_twice_and_concurrently(
    settings: Settings, db: asyncpg.Connection
) -> None:
    assert settings.database_url
    await db.execute("INSERT INTO datasets (name) VALUES ('kept')")
    conns = [await connect(settings.database_url) for _ in range(3)]
    try:
        await migrate(conns[0])  # again, sequentially
        await asyncio.gather(*(migrate(c) for c in conns))  # and from several processes at once
    finally:
        for c in conns:
            await c.close()
    assert await db.fetchval("SELECT count(*) FROM datasets") == 1
    assert await db.fetchval("SELECT max(version) FROM schema_migrations") == 1

"""TimescaleDB policies for training_metrics: compression and retention, when configured.

The hypertable itself is created by `shared.db.migrate`. On plain PostgreSQL (no timescaledb
extension in the database) this does nothing but say so once in the log.
"""

from __future__ import annotations

import asyncpg
import structlog

log = structlog.get_logger(__name__)

TABLE = "training_metrics"


def _interval(days: float) -> str:
    return f"{float(days) * 86400:.0f} seconds"


async def timescale_enabled(conn: asyncpg.Connection) -> bool:
    """Whether training_metrics is a TimescaleDB hypertable in this database."""
    installed = await conn.fetchval(
        "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
    )
    if not installed:
        return False
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = $1",
            TABLE,
        )
    )


async def apply_policies(
    conn: asyncpg.Connection,
    *,
    retention_days: float | None,
    compress_after_days: float | None,
) -> list[str]:
    """Install (or replace) the configured policies; returns what was done, for logs and tests.

    A policy that is not configured is removed, so the settings are the single source of truth.
    """
    if not await timescale_enabled(conn):
        if retention_days is not None or compress_after_days is not None:
            log.info("metrics policies skipped: training_metrics is not a TimescaleDB hypertable")
        return []
    done: list[str] = []
    async with conn.transaction():
        if compress_after_days is not None:
            await conn.execute(
                f"ALTER TABLE {TABLE} SET (timescaledb.compress,"
                " timescaledb.compress_segmentby = 'training_job_id',"
                " timescaledb.compress_orderby = 'timestamp, id')"
            )
            await conn.execute(f"SELECT remove_compression_policy('{TABLE}', if_exists => TRUE)")
            await conn.execute(
                f"SELECT add_compression_policy('{TABLE}', $1::interval)",
                _interval(compress_after_days),
            )
            done.append(f"compress after {compress_after_days} days")
        else:
            await conn.execute(f"SELECT remove_compression_policy('{TABLE}', if_exists => TRUE)")
        await conn.execute(f"SELECT remove_retention_policy('{TABLE}', if_exists => TRUE)")
        if retention_days is not None:
            await conn.execute(
                f"SELECT add_retention_policy('{TABLE}', $1::interval)",
                _interval(retention_days),
            )
            done.append(f"drop after {retention_days} days")
    log.info("metrics policies applied", policies=done or ["none"])
    return done

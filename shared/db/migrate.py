"""Migrating. Migrations are idempotent and serialised by an advisory lock, so every service
may run them at start-up, concurrently. (Connecting is `shared/db/connection.py`.)"""

from __future__ import annotations

import hashlib
from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
_LOCK_KEY = 0x4E1D_A11  # any constant; shared by every Heimdall process


async def has_timescale(conn: asyncpg.Connection) -> bool:
    available = await conn.fetchval(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    return bool(available)


async def migrate(conn: asyncpg.Connection) -> None:
    """Bring the schema up to date; safe to run any number of times, from many processes."""
    sql = resources.files("shared.db").joinpath("schema.sql").read_text()
    checksum = hashlib.sha256(sql.encode()).hexdigest()
    # The DDL takes ACCESS EXCLUSIVE locks even when it changes nothing; every service migrates
    # at start-up, so an up-to-date schema is recognised with one read and left alone.
    try:
        current = await conn.fetchval(
            "SELECT checksum FROM schema_migrations WHERE version = $1", SCHEMA_VERSION
        )
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        current = None
    if current == checksum:
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        timescale = False
        if await has_timescale(conn):
            try:
                async with conn.transaction():
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                timescale = True
            except asyncpg.PostgresError as exc:  # installed but not preloaded, for example
                log.warning("timescaledb unavailable, using plain tables", error=str(exc))
        await conn.execute(sql)
        if timescale:
            await conn.execute(
                "SELECT create_hypertable('training_metrics', 'timestamp',"
                " if_not_exists => TRUE, migrate_data => TRUE)"
            )
        await conn.execute(
            "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)"
            " ON CONFLICT (version) DO UPDATE SET checksum = EXCLUDED.checksum",
            SCHEMA_VERSION,
            checksum,
        )
    log.debug("schema migrated", version=SCHEMA_VERSION, timescale=timescale)

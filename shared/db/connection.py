"""Connections to PostgreSQL: single ones, pools, and waiting for the server to accept them.

Every connection decodes JSONB to Python values, so that callers never see JSON text.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from shared.retry import Backoff, retry


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(dsn: str, *, timeout: float = 10.0) -> asyncpg.Connection:
    """One connection (for the CLI and tests; services use a pool)."""
    conn = await asyncpg.connect(dsn, timeout=timeout)
    await _init_connection(conn)
    return conn


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, **kw: Any
) -> asyncpg.Pool:
    """A pool whose connections decode JSONB to Python values."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, **kw
    )
    assert pool is not None
    return pool


async def wait_for_database(dsn: str, *, timeout: float = 30.0) -> None:
    """Wait until PostgreSQL accepts connections (compose starts services in any order);
    raises the last connection error after `timeout` seconds."""

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    await retry(
        probe,
        what="database",
        transient=(TimeoutError, OSError, asyncpg.PostgresError),
        backoff=Backoff(initial_s=0.1, max_s=1.0),
        timeout_s=timeout,
    )

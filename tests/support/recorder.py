"""The recorder in the test's own event loop, and knowing when it has caught up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aredis

from services.recorder.app import run_recorder
from services.recorder.settings import RecorderSettings
from shared import keys
from shared.settings import Settings

FAST = RecorderSettings(
    batch_size=50, block_ms=50, claim_idle_ms=200, claim_interval_s=0.2, trim_interval_s=0.2
)
"""Small batches and short intervals, so tests see claims and trims within a second."""


@contextlib.asynccontextmanager
async def recorder(settings: Settings, rs: RecorderSettings = FAST) -> AsyncIterator[None]:
    """`run_recorder` as a task, stopped (and awaited) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_recorder(settings, stop=stop, recorder_settings=rs))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def drained(redis_client: aredis.Redis) -> bool:
    """Every entry of the events stream delivered and acked."""
    try:
        groups = await redis_client.xinfo_groups(keys.EVENTS_STREAM)
    except Exception:
        return False
    length = await redis_client.xlen(keys.EVENTS_STREAM)
    last = await redis_client.xrevrange(keys.EVENTS_STREAM, count=1)
    if not groups:
        return False
    group = groups[0]
    last_id = last[0][0] if last else b"0-0"
    return bool(group["pending"] == 0 and (length == 0 or group["last-delivered-id"] == last_id))

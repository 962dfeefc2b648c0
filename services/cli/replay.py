"""`heimdall replay JOB_ID --speed X`: a recorded job's events, re-emitted live for a frontend.

The events come from the job's event log (database, and the job's Redis stream for what the
recorder has not committed yet) and are published, with their original ids and spacing divided
by the speed, on `keys.replay_channel(job_id)`, where `/ws/replay/{job_id}` turns them into the
same WebSocket messages as a live job. Nothing is written: the job and its log stay as they are.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from contextlib import AsyncExitStack

import structlog

from shared import keys
from shared.db import create_pool
from shared.event_log import events_after
from shared.events import parse_event_id
from shared.ids import canonical_job_id
from shared.jobs import fetch_job
from shared.redis_clients import async_client
from shared.settings import Settings

log = structlog.get_logger(__name__)

PAGE = 1000


def _check(job_id: str, speed: float) -> str:
    """The canonical job id; ValueError (InvalidJobId) for a bad id or speed."""
    if not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a positive number (2 = twice as fast), not {speed!r}")
    return canonical_job_id(job_id)


async def replay(
    settings: Settings,
    job_id: str,
    speed: float = 1.0,
    on_start: Callable[[Settings, str], None] | None = None,
) -> int:
    """Re-emit a recorded job's events at `speed` times their original pace; returns how many.
    `on_start(settings, job_id)` is called once the job is found, before the first event.

    Raises ValueError for a speed that is not a positive number and for an unknown job.
    `settings` must carry resolved store URLs (see services.cli.embedded.embedded_stores).
    """
    job_id = _check(job_id, speed)
    assert settings.redis_url and settings.database_url, "resolve store URLs first"
    bound = log.bind(job_id=job_id, speed=speed)
    async with AsyncExitStack() as stack:
        pool = await create_pool(settings.database_url, min_size=1, max_size=2)
        stack.push_async_callback(pool.close)
        client = async_client(settings.redis_url, settings.redis_timeout_s)
        stack.push_async_callback(client.aclose)
        async with pool.acquire() as conn:
            if await fetch_job(conn, job_id) is None:
                raise ValueError(f"no training job with id {job_id!r}")
        channel = keys.replay_channel(job_id)
        if on_start is not None:
            on_start(settings, job_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_ms: int | None = None
        count = 0
        cursor: str | None = None
        bound.info("replay started", channel=channel)
        while True:
            page = await events_after(pool, client, job_id, cursor, PAGE)
            for event in page:
                ms, _ = parse_event_id(event.event_id)
                first_ms = ms if first_ms is None else first_ms
                delay = started + (ms - first_ms) / 1000.0 / speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await client.publish(channel, f"{event.event_id} ".encode() + bytes(event.event))
                count += 1
            if len(page) < PAGE:
                break
            cursor = page[-1].event_id
        bound.info("replay finished", events=count, seconds=round(loop.time() - started, 3))
        return count

"""The training worker as an arq Worker: `heimdall worker` calls `run_worker(settings)`.

Resources (database pool, Redis client, command listener) are opened in `on_startup` and
closed in reverse order in `on_shutdown`. Each job runs in its own training process(es); the
coroutine only supervises it, so the event loop stays free to hear cancel commands.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aredis
import structlog
from arq.worker import Worker, func

from services.tracking import JobTrackers, TrackingSettings
from services.worker.lease import Reaper
from services.worker.listener import BLOCK_MS, CommandListener
from services.worker.presence import Presence, probe
from services.worker.process import warm_up
from services.worker.runner import JobRunner, train_job
from services.worker.taker import CapableWorker
from shared import keys
from shared.db import create_pool
from shared.redis_clients import arq_client, async_client
from shared.settings import Settings
from shared.storage import open_store

log = structlog.get_logger(__name__)

JOB_TIMEOUT_S = 30 * 24 * 3600
"""Training can take days; arq must not time a job out (cancellation is ours)."""

MAX_TRIES = 1000
"""arq runs a job again after a worker shutdown cancelled it (it resumes from its checkpoint);
every deploy counts as a try, so the limit is not ours to reach. Lost workers are recovered by
the reapers instead, up to `Settings.max_recoveries` times (see lease.py)."""


def _settings_from(ctx: dict[str, Any]) -> Settings:
    settings = ctx["settings"]
    assert isinstance(settings, Settings)
    return settings


async def startup(ctx: dict[str, Any]) -> None:
    settings = _settings_from(ctx)
    assert settings.database_url and settings.redis_url
    ctx["db_pool"] = await create_pool(settings.database_url)
    # XREAD BLOCK (the command listener, the trackers) waits up to BLOCK_MS for a reply.
    client = async_client(settings.redis_url, settings.redis_timeout_s, block_s=BLOCK_MS / 1000)
    ctx["redis_client"] = client
    listener = CommandListener(client)
    await listener.start()
    ctx["listener"] = listener
    store = open_store(settings)  # one client per process: the runner's staging and the trackers
    ctx["trackers"] = JobTrackers(settings, client, ctx["tracking"], store)
    ctx["runner"] = JobRunner(
        settings, ctx["db_pool"], client, listener, ctx["trackers"], store=store
    )
    reaper = Reaper(settings, ctx["db_pool"], client, ctx["redis"])
    ctx["reaper"] = asyncio.create_task(reaper.run_forever(), name="heimdall-reaper")
    await asyncio.to_thread(warm_up)
    runner: JobRunner = ctx["runner"]
    info = await asyncio.to_thread(probe, runner.name, ctx["max_jobs"])
    presence = Presence(settings, client, info, lambda: sorted(runner.running))
    # Announced before the first poll: the API then admits jobs by this worker's capabilities.
    await presence.beat()
    ctx["presence"] = presence
    ctx["heartbeat"] = asyncio.create_task(presence.run_forever(), name="heimdall-heartbeat")
    log.info(
        "worker ready",
        queue=keys.ARQ_QUEUE,
        worker=runner.name,
        accelerators=info.accelerators,
        gpus=info.gpu_count,
        hub_reachable=info.hub_reachable,
    )


async def _stop_task(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def shutdown(ctx: dict[str, Any]) -> None:
    await _stop_task(ctx.pop("heartbeat", None))
    presence: Presence | None = ctx.pop("presence", None)
    if presence is not None:
        await presence.withdraw()
    await _stop_task(ctx.pop("reaper", None))
    trackers: JobTrackers | None = ctx.pop("trackers", None)
    if trackers is not None:
        await trackers.aclose()
    listener: CommandListener | None = ctx.pop("listener", None)
    if listener is not None:
        await listener.close()
    client: aredis.Redis | None = ctx.pop("redis_client", None)
    if client is not None:
        await client.aclose()
    pool = ctx.pop("db_pool", None)
    if pool is not None:
        await pool.close()
    ctx.pop("runner", None)


def create_worker(
    settings: Settings,
    *,
    burst: bool = False,
    max_jobs: int = 1,
    handle_signals: bool = True,
    poll_delay_s: float = 0.5,
    tracking: TrackingSettings | None = None,
) -> Worker:
    """An arq Worker for `train_job` on `keys.ARQ_QUEUE` that takes only the jobs it can run
    (see taker.py) and announces itself (see presence.py). `settings.redis_url` and
    `settings.database_url` must be set (the CLI resolves embedded stores first). `max_jobs`
    is how many jobs this worker trains at once; run more workers to scale out. `tracking`
    (default: TensorBoard only) says which trackers follow each job."""
    if not settings.redis_url or not settings.database_url:
        raise ValueError("the worker needs settings.redis_url and settings.database_url")
    return CapableWorker(
        functions=[func(train_job, name="train_job", max_tries=MAX_TRIES, timeout=JOB_TIMEOUT_S)],
        queue_name=keys.ARQ_QUEUE,
        redis_pool=arq_client(settings.redis_url, settings.redis_timeout_s, keys.ARQ_QUEUE),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx={
            "settings": settings,
            "tracking": tracking or TrackingSettings(),
            "max_jobs": max_jobs,
        },
        burst=burst,
        max_jobs=max_jobs,
        job_timeout=JOB_TIMEOUT_S,
        max_tries=MAX_TRIES,
        handle_signals=handle_signals,
        poll_delay=poll_delay_s,
        keep_result=3600,
    )


async def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    max_jobs: int = 1,
    tracking: TrackingSettings | None = None,
) -> None:
    """Run the worker until SIGINT/SIGTERM (or, with `burst`, until the queue is empty), then
    stop any training process and close every connection."""
    worker = create_worker(settings, burst=burst, max_jobs=max_jobs, tracking=tracking)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        # arq's signal handler cancels its own main task, which surfaces here; a cancellation
        # aimed at this coroutine itself still propagates.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        log.info("worker stopping on signal")
    finally:
        await worker.close()

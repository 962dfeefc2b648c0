"""Pause and resume through the API, with a real worker, recorder and training processes; and
the WebSocket showing `paused` and the resumption."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import redis
import redis.asyncio as aredis
import websockets
from support import running_system, serve_api, wait_for
from support.worker import SMALL, events_of
from support.ws import make_job, recv_json, recv_until, ws_url

from shared.datasets import write_synthetic
from shared.emit import AsyncEmitter
from shared.events import (
    BatchProgress,
    EpochCompleted,
    JobCompleted,
    JobPaused,
    JobResumed,
    JobStarted,
)
from shared.settings import Settings
from shared.storage import open_store

pytestmark = [
    pytest.mark.usefixtures("children_one_thread"),
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]

JOBS = "/api/v1/training/jobs"
EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "learning_rate")


@pytest.fixture
async def system(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    await write_synthetic(db, open_store(settings), "synth", 84, seed=1, duration_s=0.25)
    async with running_system(settings) as client:
        yield client


async def _status(client: httpx.AsyncClient, job_id: str) -> str:
    return str((await client.get(f"{JOBS}/{job_id}")).json()["job"]["status"])


async def _epochs(client: httpx.AsyncClient, job_id: str) -> list[float]:
    rows = (await client.get(f"{JOBS}/{job_id}/metrics")).json()["metrics"]
    return [row[k] for row in rows for k in EPOCH_KEYS]


async def test_pause_then_resume_equals_an_uninterrupted_run(
    system: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    client = system
    body = {"job_name": "t", "config": {**SMALL, "epochs": 5}}

    async def create() -> str:
        resp = await client.post(JOBS, json=body)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    plain = await create()
    await wait_for(lambda: _done(client, plain), timeout=400, what="the uninterrupted job")

    job = await create()
    first_task = (await client.get(f"{JOBS}/{job}")).json()["job"]["celery_task_id"]

    async def in_epoch_two() -> bool:
        return any(
            isinstance(e, BatchProgress) and e.epoch >= 2 for e in events_of(sync_redis, job)
        )

    await wait_for(in_epoch_two, timeout=300, what="the second epoch")
    resp = await client.post(f"{JOBS}/{job}/pause")
    assert resp.status_code == 200, resp.text
    await wait_for(lambda: _is(client, job, "paused"), timeout=60, what="status paused")
    paused = [e for e in events_of(sync_redis, job) if isinstance(e, JobPaused)]
    assert len(paused) == 1 and paused[0].checkpoint_path and paused[0].epoch >= 2
    assert (await client.post(f"{JOBS}/{job}/pause")).status_code == 409

    resp = await client.post(f"{JOBS}/{job}/resume")
    assert resp.status_code == 200, resp.text
    assert resp.json()["job"]["status"] == "running"
    assert resp.json()["job"]["celery_task_id"] != first_task
    assert (await client.post(f"{JOBS}/{job}/resume")).status_code == 409
    await wait_for(lambda: _done(client, job), timeout=400, what="the resumed job")

    assert await _epochs(client, job) == pytest.approx(await _epochs(client, plain), rel=1e-6)
    events = events_of(sync_redis, job)
    assert [e.start_epoch for e in events if isinstance(e, JobStarted)] == [1, paused[0].epoch]
    assert [e.epoch for e in events if isinstance(e, EpochCompleted)] == [1, 2, 3, 4, 5]
    assert sum(isinstance(e, JobResumed) for e in events) == 1
    batches = (await client.get(f"{JOBS}/{job}/metrics", params={"phase": "train"})).json()
    seen = [(m["epoch"], m["batch"]) for m in batches["metrics"]]
    assert len(seen) == len(set(seen)) == 5 * max(b for _, b in seen)

    for path in (f"{JOBS}/{job}/pause", f"{JOBS}/{job}/resume"):
        assert (await client.post(path)).status_code == 409
    unknown = "7b1e1f4e-0000-4000-8000-000000000000"
    for path in (f"{JOBS}/{unknown}/pause", f"{JOBS}/{unknown}/resume"):
        assert (await client.post(path)).status_code == 404


async def _is(client: httpx.AsyncClient, job_id: str, status: str) -> bool:
    return await _status(client, job_id) == status


async def _done(client: httpx.AsyncClient, job_id: str) -> bool:
    status = await _status(client, job_id)
    assert status not in ("failed", "cancelled"), status
    return status == "completed"


async def test_websocket_shows_paused_and_the_resumption(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await make_job(db, epochs=3)
    emitter = AsyncEmitter(redis_client)
    async with serve_api(settings) as base, websockets.connect(ws_url(base, job)) as ws:
        await recv_json(ws)
        assert (await recv_json(ws))["status"] == "queued"
        await emitter.emit(JobStarted(job_id=job, total_batches=4))
        await emitter.emit(BatchProgress(job_id=job, epoch=1, batch=2, total_batches=4))
        await emitter.emit(JobPaused(job_id=job, checkpoint_path="resume.pt", epoch=1, batch=2))
        paused = (await recv_until(ws, lambda m: m.get("status") == "paused"))[-1]
        assert paused["current_epoch"] == 1 and paused["current_batch"] == 2
        await emitter.emit(JobResumed(job_id=job, task_id="t2"))
        await recv_until(ws, lambda m: m.get("status") == "running")
        await emitter.emit(JobStarted(job_id=job, total_batches=4, start_epoch=1))
        await emitter.emit(JobCompleted(job_id=job, epochs_run=3))
        done = (await recv_until(ws, lambda m: m.get("status") == "completed"))[-1]
        assert done["progress_percent"] == 100.0

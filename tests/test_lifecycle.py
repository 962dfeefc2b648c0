"""A job's lifecycle against the promises of issue 12, through the whole system in this process
(real Valkey, PostgreSQL, an arq worker training in child processes, the recorder).

- Any spelling of a job id reaches the one job: a cancel or delete in another spelling stops
  the training and leaves no key of either spelling (defect 1).
- A cancel of a finished job is a 409 naming its status, also before the recorder has written
  the completion, and the model stays downloadable (defect 2).
- After a delete no Redis key names the job, nor its files remain (defect 8).
- A WebSocket resuming from an id beyond the job's last event still gets the final status and
  a close (defect 7).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aredis
import websockets
from support import running_system, serve_api, wait_for
from support.worker import SMALL
from support.ws import make_job, recv_all, recv_json, ws_url

from shared import keys
from shared.emit import AsyncEmitter
from shared.events import EpochCompleted, JobCancelled, JobCompleted, JobStarted, decode_event
from shared.settings import Settings

pytestmark = [
    pytest.mark.usefixtures("children_one_thread"),
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]

JOBS = "/api/v1/training/jobs"
FINISHED = ("completed", "failed", "cancelled")


def spellings(job_id: str) -> list[str]:
    """Other spellings of the same UUID that `uuid.UUID` (and PostgreSQL) accept."""
    plain = uuid.UUID(job_id).hex
    return [job_id.upper(), plain, "{" + job_id + "}", f"urn:uuid:{job_id}", plain.upper()]


@pytest.fixture
async def system(settings: Settings, dataset: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running_system(settings) as client:
        yield client


async def _submit(client: httpx.AsyncClient, **config: Any) -> str:
    resp = await client.post(JOBS, json={"job_name": "life", "config": {**SMALL, **config}})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def _job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    return (await client.get(f"{JOBS}/{job_id}")).json()["job"]


async def _running(client: httpx.AsyncClient, job_id: str) -> None:
    async def batches() -> bool:
        job = await _job(client, job_id)
        assert job["status"] not in FINISHED, job
        return bool(job["status"] == "running" and job["current_batch"])

    await wait_for(batches, timeout=180, what="the job to train")


async def _keys_naming(redis_client: aredis.Redis, job_id: str) -> list[bytes]:
    """Every Redis key whose name holds the job's id, in any case and with or without dashes,
    and whether the active-job table still names it."""
    plain = uuid.UUID(job_id).hex
    found = [
        key
        async for key in redis_client.scan_iter(count=1000)
        if job_id in key.decode().lower() or plain in key.decode().lower().replace("-", "")
    ]
    if await redis_client.hexists(keys.ACTIVE_JOBS, job_id):  # type: ignore[misc]
        found.append(keys.ACTIVE_JOBS.encode())
    return found


async def _let_go(redis_client: aredis.Redis, job_id: str) -> None:
    """Wait until no worker holds the job (its lease gone, not in the active-job table)."""

    async def free() -> bool:
        held = await redis_client.exists(keys.lease(job_id))
        active = await redis_client.hexists(keys.ACTIVE_JOBS, job_id)  # type: ignore[misc]
        return not held and not active

    await wait_for(free, timeout=30, what="the worker to let go of the job")


def test_spellings_are_one_uuid() -> None:
    job_id = str(uuid.uuid4())
    assert {str(uuid.UUID(s)) for s in spellings(job_id)} == {job_id}


async def test_every_spelling_names_the_one_job(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    """No worker: each spelling reads the job under its canonical id, and a cancel in one of
    them writes only canonical keys and events."""
    job_id = await make_job(db, epochs=3)
    async with serve_api(settings) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            for spelling in spellings(job_id):
                resp = await client.get(f"{JOBS}/{spelling}")
                assert resp.status_code == 200, (spelling, resp.text)
                assert resp.json()["job"]["id"] == job_id
                assert resp.json()["websocket_url"].endswith(f"/ws/training/{job_id}")
            resp = await client.post(f"{JOBS}/{job_id.upper()}/cancel")
            assert resp.status_code == 200 and resp.json()["job"]["status"] == "cancelled"
            again = await client.post(f"{JOBS}/urn:uuid:{job_id}/cancel")
            assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
        async with websockets.connect(ws_url(base, "{" + job_id.upper() + "}")) as ws:
            assert (await recv_json(ws))["job_id"] == job_id
            assert (await recv_json(ws))["status"] == "cancelled"
            await recv_all(ws)
            assert ws.close_code == 1000
    names = {key.decode() async for key in redis_client.scan_iter(count=1000)}
    assert keys.final(job_id) in names and keys.cancel_flag(job_id) in names
    assert not any(job_id.upper() in n or uuid.UUID(job_id).hex in n for n in names), names
    events = [decode_event(f[b"data"]) for _, f in await redis_client.xrange(keys.EVENTS_STREAM)]
    assert [(type(e), e.job_id) for e in events] == [(JobCancelled, job_id)]


async def test_cancel_in_another_spelling_stops_a_running_job(
    system: httpx.AsyncClient, redis_client: aredis.Redis
) -> None:
    job_id = await _submit(system, epochs=200)
    await _running(system, job_id)
    resp = await system.post(f"{JOBS}/{job_id.upper()}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json()["job"]["id"] == job_id and resp.json()["job"]["status"] == "cancelled"
    await _let_go(redis_client, job_id)
    events = [
        decode_event(f[b"data"]) for _, f in await redis_client.xrange(keys.job_stream(job_id))
    ]
    assert sum(isinstance(e, JobCancelled) for e in events) == 1
    assert not any(isinstance(e, JobCompleted) for e in events)
    assert {e.job_id for e in events} == {job_id}
    # Still stoppable and still one job: the canonical spelling sees it cancelled.
    job = await wait_for(
        lambda: _finished(system, job_id), timeout=30, what="the row to say cancelled"
    )
    assert job["status"] == "cancelled" and job["current_epoch"] < 200
    again = await system.post(f"{JOBS}/{job_id}/cancel")
    assert again.status_code == 409


async def _finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any] | None:
    job = await _job(client, job_id)
    return job if job["status"] in FINISHED else None


async def test_delete_in_another_spelling_leaves_no_trace(
    system: httpx.AsyncClient, settings: Settings, redis_client: aredis.Redis, db: Any
) -> None:
    job_id = await _submit(system, epochs=200)
    await _running(system, job_id)
    job_dir = settings.artifacts_dir / job_id
    await wait_for(job_dir.exists, timeout=60, what="the job's folder")
    resp = await system.delete(f"{JOBS}/urn:uuid:{job_id.upper()}")
    assert resp.status_code == 204, resp.text
    assert (await system.get(f"{JOBS}/{job_id}")).status_code == 404
    await _let_go(redis_client, job_id)
    # The worker's last words (a cancel, a checkpoint) cannot bring a key or a file back.
    assert await _keys_naming(redis_client, job_id) == []
    await wait_for(lambda: not job_dir.exists(), timeout=30, what="the job's files to go")
    assert await db.fetchval("SELECT count(*) FROM training_jobs") == 0
    assert await db.fetchval("SELECT count(*) FROM training_metrics") == 0
    # Give the recorder the chance to write what the worker emitted last: no row comes back.
    probe = await make_job(db, epochs=1)
    await AsyncEmitter(redis_client).emit(JobStarted(job_id=probe))
    await wait_for(
        lambda: db.fetchval("SELECT count(*) FROM training_events WHERE training_job_id = $1",
                            uuid.UUID(probe)),
        what="the recorder to catch up",
    )  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM training_events") == 1
    assert await _keys_naming(redis_client, job_id) == []


async def test_cancel_after_completion_is_409_and_the_model_stays(
    system: httpx.AsyncClient, redis_client: aredis.Redis
) -> None:
    job_id = await _submit(system, epochs=1)

    async def completed_in_the_stream() -> bool:
        entries = await redis_client.xrange(keys.job_stream(job_id))
        return any(isinstance(decode_event(f[b"data"]), JobCompleted) for _, f in entries)

    # As soon as the completion is emitted, before the recorder may have written it.
    await wait_for(completed_in_the_stream, timeout=240, step=0.005, what="job_completed")
    resp = await system.post(f"{JOBS}/{job_id}/cancel")
    assert resp.status_code == 409, resp.text
    assert "completed" in resp.json()["detail"]
    job = await wait_for(lambda: _finished(system, job_id), timeout=30, what="the row")
    assert job["status"] == "completed" and job["onnx_model_path"]
    model = await system.get(f"{JOBS}/{job_id}/artifacts/onnx")
    assert model.status_code == 200 and len(model.content) > 1000
    events = [
        decode_event(f[b"data"]) for _, f in await redis_client.xrange(keys.job_stream(job_id))
    ]
    assert not any(isinstance(e, JobCancelled) for e in events)
    assert isinstance(events[-1], JobCompleted)


async def test_after_beyond_the_last_event_still_ends_in_the_final_status(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job_id = await make_job(db, epochs=2)
    emitter = AsyncEmitter(redis_client)
    await emitter.emit(JobStarted(job_id=job_id, total_batches=4))
    async with (
        serve_api(settings) as base,
        websockets.connect(ws_url(base, job_id, after="99999999999999-0")) as ws,
    ):
        assert (await recv_json(ws))["event"] == "connected"
        assert (await recv_json(ws))["event"] == "training_status"
        epoch = EpochCompleted(
            job_id=job_id, epoch=1, total_epochs=2, train_loss=1.0, val_loss=1.0,
            train_accuracy=0.5, val_accuracy=0.5, learning_rate=0.01,
        )  # fmt: skip
        await emitter.emit(epoch)
        await emitter.emit(JobCompleted(job_id=job_id, epochs_run=1))
        rest = await recv_all(ws)
        assert ws.close_code == 1000
    assert [m["epoch"] for m in rest if m["event"] == "epoch_completed"] == [1]
    assert rest[-1]["event"] == "training_status" and rest[-1]["status"] == "completed"

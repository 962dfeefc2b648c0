"""The job WebSocket against a real uvicorn server, Valkey and PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest
import redis.asyncio as aredis
import websockets
from support import serve_api
from support.ws import epoch_event, make_job, recv_all, recv_json, ws_url

from shared.emit import AsyncEmitter
from shared.events import BatchProgress, JobCompleted, JobStarted
from shared.settings import Settings


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[str]:
    async with serve_api(settings) as base:
        yield base


async def test_connected_then_snapshot_then_every_epoch_in_order(
    api: str, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await make_job(db, epochs=5)
    emitter = AsyncEmitter(redis_client)
    async with websockets.connect(ws_url(api, job)) as ws:
        first = await recv_json(ws)
        assert first["event"] == "connected" and first["job_id"] == job
        assert first["message"] == "Connected to training job"
        snap = await recv_json(ws)
        assert snap["event"] == "training_status" and snap["status"] == "queued"
        assert snap["timestamp"].endswith("Z") and len(snap["timestamp"]) == 24
        await emitter.emit(JobStarted(job_id=job, total_batches=10))
        for epoch in range(1, 6):
            await emitter.emit(BatchProgress(job_id=job, epoch=epoch, batch=5, total_batches=10))
            await emitter.emit(epoch_event(job, epoch))
        await emitter.emit(JobCompleted(job_id=job, epochs_run=5))
        rest = await recv_all(ws)
        assert ws.close_code == 1000
    epochs = [m for m in rest if m["event"] == "epoch_completed"]
    assert [m["epoch"] for m in epochs] == [1, 2, 3, 4, 5]
    assert {
        "train_loss",
        "val_loss",
        "train_accuracy",
        "val_accuracy",
        "learning_rate",
        "gradient_norm",
        "epoch_time_s",
        "event_id",
        "timestamp",
    } <= set(epochs[0])
    statuses = [m for m in rest if m["event"] == "training_status"]
    assert statuses[0]["status"] == "running"
    assert statuses[-1]["status"] == "completed" and statuses[-1]["progress_percent"] == 100.0
    halfway = [m for m in statuses if m["current_batch"] == 5 and m["current_epoch"] == 3]
    assert halfway and halfway[0]["progress_percent"] == pytest.approx(50.0)
    keys = [tuple(map(int, m["event_id"].split("-"))) for m in rest]
    assert keys == sorted(keys) and len(set(keys)) == 1 + 5 * 2 + 1
    assert statuses[-1]["metrics"]["train_loss"] == pytest.approx(0.2)


async def test_ping_pong_and_malformed_messages(api: str, db: asyncpg.Connection) -> None:
    job = await make_job(db)
    async with websockets.connect(ws_url(api, job)) as ws:
        await recv_json(ws)
        await recv_json(ws)
        await ws.send('{"event": "ping"}')
        pong = await recv_json(ws)
        assert pong["event"] == "pong" and pong["timestamp"].endswith("Z")
        for bad in ("not json", '{"event": "dance"}', "[1, 2]", b"\x00\x01"):
            await ws.send(bad)
            error = await recv_json(ws)
            assert error["event"] == "error" and error["message"]
        await ws.send('{"event": "ping"}')
        assert (await recv_json(ws))["event"] == "pong"


@pytest.mark.parametrize("job_id", ["7b1e1f4e-0000-4000-8000-000000000000", "not-a-uuid"])
async def test_unknown_job_gets_error_then_4404(api: str, job_id: str) -> None:
    async with websockets.connect(ws_url(api, job_id)) as ws:
        error = await recv_json(ws)
        assert error["event"] == "error" and job_id in error["message"]
        with pytest.raises(websockets.ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 4404


async def test_finished_job_sends_snapshot_and_closes_1000(
    api: str, db: asyncpg.Connection
) -> None:
    job = await make_job(db)
    await db.execute(
        "UPDATE training_jobs SET status = 'completed', progress_percent = 100 WHERE id = $1::uuid",
        job,
    )
    async with websockets.connect(ws_url(api, job)) as ws:
        messages = await recv_all(ws)
        assert ws.close_code == 1000
    assert [m["event"] for m in messages] == ["connected", "training_status"]
    assert messages[1]["status"] == "completed"


async def test_heartbeat_when_nothing_happens(settings: Settings, db: asyncpg.Connection) -> None:
    job = await make_job(db)
    async with serve_api(replace(settings, heartbeat_s=0.3)) as base:
        async with websockets.connect(ws_url(base, job)) as ws:
            await recv_json(ws)
            await recv_json(ws)
            loop = asyncio.get_running_loop()
            start = loop.time()
            beats = [await recv_json(ws, 2), await recv_json(ws, 2)]
            assert all(b["event"] == "training_status" for b in beats)
            assert loop.time() - start < 1.5


async def test_token_required_on_websocket(settings: Settings, db: asyncpg.Connection) -> None:
    job = await make_job(db)
    async with serve_api(replace(settings, api_token="s3cret")) as base:
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(ws_url(base, job)):
                pass
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(ws_url(base, job, token="wrong")):
                pass
        async with websockets.connect(ws_url(base, job, token="s3cret")) as ws:
            assert (await recv_json(ws))["event"] == "connected"
        headers = {"Authorization": "Bearer s3cret"}
        async with websockets.connect(ws_url(base, job), additional_headers=headers) as ws:
            assert (await recv_json(ws))["event"] == "connected"


async def test_clients_that_leave_mid_backlog_leave_no_unread_task_error(
    api: str, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    """Viewers that drop their connection while the server sends them a job's backlog: each
    session ends quietly (asyncio reported "Task exception was never retrieved" for the pump of
    every such viewer)."""
    loop = asyncio.get_running_loop()
    unread: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unread.append(str(context.get("message"))))
    try:
        job = await make_job(db, epochs=3)
        emitter = AsyncEmitter(redis_client)
        first = await emitter.emit(JobStarted(job_id=job, total_batches=3000))
        for batch in range(1, 3001):
            await emitter.emit(BatchProgress(job_id=job, epoch=1, batch=batch, total_batches=3000))
        for _ in range(8):
            ws = await websockets.connect(ws_url(api, job, after=first))
            assert (await recv_json(ws))["event"] == "connected"
            ws.transport.abort()  # gone at once, mid-backlog
            await asyncio.sleep(0.2)
        gc.collect()
        await asyncio.sleep(0.5)
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert not [m for m in unread if "never retrieved" in m], unread

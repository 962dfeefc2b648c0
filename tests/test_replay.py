"""`replay`: a recorded job's events re-emitted to /ws/replay/{id}, at a chosen speed."""

from __future__ import annotations

import asyncio
import math
import time

import asyncpg
import pytest
import redis.asyncio as aredis
import websockets
from support import serve_api
from support.ws import epoch_event, make_job, recv_all, recv_json

from services.cli.replay import replay
from shared.emit import AsyncEmitter
from shared.events import BatchProgress, JobCompleted, JobStarted
from shared.settings import Settings


@pytest.mark.parametrize("speed", [0, -1.5, math.nan, math.inf])
async def test_speed_must_be_positive(
    settings: Settings, db: asyncpg.Connection, speed: float
) -> None:
    job = await make_job(db)
    with pytest.raises(ValueError, match="speed"):
        await replay(settings, job, speed)


@pytest.mark.parametrize("job_id", ["7b1e1f4e-0000-4000-8000-000000000000", "nope"])
async def test_unknown_job_is_a_clear_error(settings: Settings, job_id: str) -> None:
    with pytest.raises(ValueError, match="no training job"):
        await replay(settings, job_id, 1.0)


async def test_replay_reaches_the_replay_socket_in_live_formats_at_speed(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await make_job(db, epochs=3)
    emitter = AsyncEmitter(redis_client)
    await emitter.emit(JobStarted(job_id=job, total_batches=2))
    for epoch in (1, 2, 3):
        await emitter.emit(BatchProgress(job_id=job, epoch=epoch, batch=1, total_batches=2))
        await asyncio.sleep(0.1)  # recorded spacing, which the replay reproduces
        await emitter.emit(epoch_event(job, epoch, total=3))
    await emitter.emit(JobCompleted(job_id=job, epochs_run=3))
    async with serve_api(settings) as base:
        url = f"{base.replace('http', 'ws', 1)}/ws/replay/{job}"
        for speed, slowest in ((1.0, None), (50.0, 0.2)):
            async with websockets.connect(url) as ws:
                connected = await recv_json(ws)
                assert connected["event"] == "connected" and "replay" in connected["message"]
                snapshot = await recv_json(ws)
                assert snapshot["status"] == "queued" and snapshot["current_epoch"] == 0
                start = time.monotonic()
                count = await replay(settings, job, speed)
                took = time.monotonic() - start
                messages = await recv_all(ws)
                assert ws.close_code == 1000
            assert count == 8
            epochs = [m for m in messages if m["event"] == "epoch_completed"]
            assert [m["epoch"] for m in epochs] == [1, 2, 3]
            assert messages[-1]["event"] == "training_status"
            assert messages[-1]["status"] == "completed"
            if slowest is None:
                assert took >= 0.28  # three 0.1 s gaps, kept at speed 1
            else:
                assert took < slowest

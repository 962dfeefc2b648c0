"""Resume with ?after=: a client that drops and reconnects ends with exactly the same events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

import asyncpg
import redis.asyncio as aredis
import websockets
from support import serve_api
from support.ws import epoch_event, make_job, recv_all, recv_json, ws_url

from shared.emit import AsyncEmitter
from shared.events import BatchProgress, JobCompleted, JobStarted
from shared.settings import Settings


def event_ids(sessions: list[list[dict[str, Any]]]) -> list[str]:
    """The ids of the events a client was told about, in order, without connect-time snapshots
    and repeats (heartbeats, the status that follows an epoch_completed)."""
    out: list[str] = []
    for messages in sessions:
        assert messages[0]["event"] == "connected" and messages[1]["event"] == "training_status"
        for message in messages[2:]:
            event_id = message.get("event_id")
            if event_id and (not out or out[-1] != event_id):
                out.append(event_id)
    return out


async def test_resume_after_drop_gets_the_same_events_as_a_steady_client(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await make_job(db, epochs=4)
    emitter = AsyncEmitter(redis_client)
    emitted: list[str] = []
    rng = random.Random(7)

    async def burst(epoch: int, size: int) -> None:
        for batch in range(1, size + 1):
            event = BatchProgress(job_id=job, epoch=epoch, batch=batch, total_batches=size)
            emitted.append(await emitter.emit(event))
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        emitted.append(await emitter.emit(epoch_event(job, epoch, total=4)))

    async with serve_api(settings) as base:
        steady = await websockets.connect(ws_url(base, job))
        steady_task = asyncio.create_task(recv_all(steady, timeout=60))
        dropper = await websockets.connect(ws_url(base, job))
        sessions: list[list[dict[str, Any]]] = [
            [await recv_json(dropper), await recv_json(dropper)]
        ]
        emitted.append(await emitter.emit(JobStarted(job_id=job, total_batches=40)))
        for epoch in range(1, 5):
            producer = asyncio.create_task(burst(epoch, 40))
            # Read part of the burst, drop the connection mid-burst...
            for _ in range(rng.randint(3, 15)):
                sessions[-1].append(await recv_json(dropper))
            await dropper.close()
            last = sessions[-1][-1]["event_id"]
            if epoch % 2:
                await producer  # ...and let the rest of it happen while disconnected,
            # or reconnect while it is still going on.
            dropper = await websockets.connect(ws_url(base, job, after=last))
            sessions.append([])
            await producer
            with contextlib.suppress(TimeoutError):
                while True:
                    message = await recv_json(dropper, timeout=0.3)
                    sessions[-1].append(message)
                    if message["event"] == "epoch_completed" and message["epoch"] == epoch:
                        break
        emitted.append(await emitter.emit(JobCompleted(job_id=job, epochs_run=4)))
        sessions[-1].extend(await recv_all(dropper, timeout=20))
        assert dropper.close_code == 1000
        steady_messages = await steady_task
        assert steady.close_code == 1000

    assert event_ids([steady_messages]) == emitted
    assert event_ids(sessions) == emitted
    resumed = sessions[1][1]
    assert (
        resumed["event"] == "training_status" and resumed["event_id"] == sessions[0][-1]["event_id"]
    )
    assert [m["epoch"] for s in sessions for m in s if m["event"] == "epoch_completed"] == [
        1,
        2,
        3,
        4,
    ]
    assert json.dumps(sessions[-1][-1]).count('"completed"') == 1


async def test_resume_of_finished_job_replays_what_was_missed_then_closes(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await make_job(db, epochs=2)
    emitter = AsyncEmitter(redis_client)
    first = await emitter.emit(JobStarted(job_id=job, total_batches=4))
    missed = [await emitter.emit(epoch_event(job, e, total=2)) for e in (1, 2)]
    missed.append(await emitter.emit(JobCompleted(job_id=job, epochs_run=2)))
    # As the recorder would have projected it:
    await db.execute(
        "UPDATE training_jobs SET status = 'completed', started_at = now(), current_epoch = 2,"
        " progress_percent = 100, last_event_id = $2 WHERE id = $1::uuid",
        job,
        missed[-1],
    )
    async with serve_api(settings) as base:
        async with websockets.connect(ws_url(base, job, after=first)) as ws:
            messages = await recv_all(ws)
            assert ws.close_code == 1000
        async with websockets.connect(ws_url(base, job, after="bogus")) as ws:
            error = await recv_json(ws)
            assert error["event"] == "error"
            await recv_all(ws)
            assert ws.close_code == 4400
    snapshot = messages[1]
    assert snapshot["event_id"] == first and snapshot["status"] == "running"
    assert event_ids([messages]) == missed
    statuses = [m["status"] for m in messages if m["event"] == "training_status"]
    assert statuses == ["running", "running", "running", "completed"]

"""Real API processes: replicas behind one Redis, slow clients, and `heimdall api --processes
N --server uvicorn|granian` on one port."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aredis
import websockets
from support import wait_for
from support.cli import heimdall, service_env
from support.ws import api_processes, epoch_event, make_job, recv_all, recv_json, ws_url

from shared.emit import AsyncEmitter
from shared.events import BatchProgress, JobCompleted, JobStarted, JobWarning
from shared.net import free_port
from shared.settings import Settings

pytestmark = pytest.mark.slow


async def test_two_api_processes_both_push_every_event(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await make_job(db, epochs=3)
    emitter = AsyncEmitter(redis_client)
    async with api_processes(settings, count=2) as bases:
        clients = [await websockets.connect(ws_url(base, job)) for base in bases]
        for ws in clients:
            assert (await recv_json(ws))["event"] == "connected"
            await recv_json(ws)
        tasks = [asyncio.create_task(recv_all(ws, timeout=30)) for ws in clients]
        emitted = [await emitter.emit(JobStarted(job_id=job, total_batches=2))]
        for epoch in (1, 2, 3):
            emitted.append(
                await emitter.emit(BatchProgress(job_id=job, epoch=epoch, batch=1, total_batches=2))
            )
            emitted.append(await emitter.emit(epoch_event(job, epoch, total=3)))
        emitted.append(await emitter.emit(JobCompleted(job_id=job, epochs_run=3)))
        results = await asyncio.gather(*tasks)
    for ws, messages in zip(clients, results, strict=True):
        assert ws.close_code == 1000
        ids: list[str] = []
        for message in messages:
            if not ids or ids[-1] != message["event_id"]:
                ids.append(message["event_id"])
        assert ids == emitted
    assert results[0][-1]["status"] == results[1][-1]["status"] == "completed"


async def test_stalled_client_is_cut_off_without_slowing_the_others(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await make_job(db, epochs=1)
    emitter = AsyncEmitter(redis_client)
    count = 2000
    async with api_processes(settings, count=1, buffer=256) as (base,):
        # The stalled client: a tiny receive window, and it never reads.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        stalled = await websockets.connect(ws_url(base, job), sock=sock, max_queue=2)
        healthy = await websockets.connect(ws_url(base, job))
        await recv_json(healthy)
        await recv_json(healthy)
        sent_at: dict[str, float] = {}
        latencies: list[float] = []

        async def read_healthy() -> None:
            while len(latencies) < count:
                message = await recv_json(healthy, timeout=10)
                if message["event_id"] in sent_at:
                    latencies.append(time.monotonic() - sent_at.pop(message["event_id"]))

        reader = asyncio.create_task(read_healthy())
        await emitter.emit(JobStarted(job_id=job, total_batches=count))
        for batch in range(1, count + 1):
            # Every tenth event is a bulky warning (random text: WebSocket frames are
            # compressed), so that the socket buffers fill up quickly.
            event = (
                JobWarning(job_id=job, message=secrets.token_urlsafe(40_000))
                if batch % 10 == 0
                else BatchProgress(job_id=job, epoch=1, batch=batch, total_batches=count)
            )
            start = time.monotonic()
            sent_at[await emitter.emit(event)] = start
            if batch % 10 == 0:
                await asyncio.sleep(0.008)  # a fast producer: about 1,000 events per second
        await asyncio.wait_for(reader, 30)
        latencies.sort()
        assert latencies[int(0.99 * len(latencies))] < 1.0, latencies[-10:]
        await healthy.close()

        # Reading again, the stalled client gets what was buffered, then the close and why.
        async with asyncio.timeout(60):
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await stalled.recv()
        assert stalled.close_code == 4408, stalled.close_code
        assert stalled.close_reason and "after=" in stalled.close_reason


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
async def test_heimdall_api_processes_on_one_port_push_and_resume(
    settings: Settings,
    db: asyncpg.Connection,
    redis_client: aredis.Redis,
    tmp_path: Path,
    server: str,
) -> None:
    """`heimdall api --processes 2 --server S`: whichever process a client lands on, it gets
    every event live, and a client resuming with `?after=` gets the rest with no gap."""
    job = await make_job(db, epochs=2)
    emitter = AsyncEmitter(redis_client)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(settings, HEIMDALL_PORT=str(port), HEIMDALL_LOG_LEVEL="WARNING")
    log = tmp_path / "api.log"
    args = ("api", "--processes", "2", "--server", server)
    with heimdall(*args, env=env, log=log) as proc:

        async def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            async with httpx.AsyncClient() as http:
                try:
                    return (await http.get(f"{base}/ready", timeout=2)).status_code == 200
                except httpx.HTTPError:
                    return False

        await wait_for(ready, timeout=60, what=f"heimdall api --server {server}")
        clients = [await websockets.connect(ws_url(base, job)) for _ in range(6)]
        for ws in clients:
            assert (await recv_json(ws))["event"] == "connected"
            await recv_json(ws)
        tasks = [asyncio.create_task(recv_all(ws, timeout=30)) for ws in clients]
        first = await emitter.emit(JobStarted(job_id=job, total_batches=2))
        emitted = [first]
        for epoch in (1, 2):
            emitted.append(await emitter.emit(epoch_event(job, epoch, total=2)))
        emitted.append(await emitter.emit(JobCompleted(job_id=job, epochs_run=2)))
        results = await asyncio.gather(*tasks)
        async with websockets.connect(ws_url(base, job, after=first)) as ws:
            resumed = await recv_all(ws, timeout=30)
    for messages in results:
        ids = {m["event_id"] for m in messages if m.get("event_id")}
        assert ids == set(emitted), messages[-1]
    assert [m["event_id"] for m in resumed if m.get("event") == "epoch_completed"] == emitted[1:3]
    assert resumed[-1]["status"] == "completed"

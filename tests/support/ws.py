"""Helpers of the WebSocket tests: API servers in subprocesses, real clients, event builders."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from shared.config import TrainingConfig
from shared.events import EpochCompleted
from shared.jobs import insert_job
from shared.net import free_port
from shared.settings import Settings
from support import wait_for

REPO = Path(__file__).resolve().parents[2]


def ws_url(base: str, job_id: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{base.replace('http', 'ws', 1)}/ws/training/{job_id}" + (f"?{query}" if query else "")


SERVER_SCRIPT = """
import sys, uvicorn
from services.api import live_hub
from services.api.app import create_app
from shared.settings import Settings
redis_url, database_url, data_dir, port, token, buffer = sys.argv[1:7]
live_hub.SEND_BUFFER_EVENTS = int(buffer)
settings = Settings(redis_url=redis_url, database_url=database_url, data_dir=data_dir,
                    api_token=token or None)
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(port), log_level="warning")
"""


@contextlib.asynccontextmanager
async def api_processes(
    settings: Settings, count: int = 1, buffer: int = 512, token: str = ""
) -> AsyncIterator[list[str]]:
    """`count` API processes (uvicorn subprocesses) on free ports; yields their base URLs."""
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for _ in range(count):
            port = free_port()
            args = [
                str(settings.redis_url),
                str(settings.database_url),
                str(settings.data_dir),
                str(port),
                token,
                str(buffer),
            ]
            proc = subprocess.Popen(  # noqa: ASYNC220 - starting is instant; waits are async
                [sys.executable, "-c", SERVER_SCRIPT, *args], cwd=REPO, env=dict(os.environ)
            )
            procs.append((proc, f"http://127.0.0.1:{port}"))
        for proc, base in procs:
            await wait_for(
                lambda p=proc, b=base: _ready(p, b),  # type: ignore[misc]
                timeout=60,
                what=f"the API at {base}",
            )
        yield [base for _, base in procs]
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)


async def _ready(proc: subprocess.Popen[bytes], base: str) -> bool:
    assert proc.poll() is None, f"the API server at {base} exited during start-up"
    async with httpx.AsyncClient() as client:
        with contextlib.suppress(httpx.HTTPError):
            return (await client.get(f"{base}/health", timeout=1)).status_code == 200
    return False


async def make_job(db: asyncpg.Connection, epochs: int = 5) -> str:
    row = await insert_job(db, "ws test", TrainingConfig(epochs=epochs))
    return str(row["id"])


def epoch_event(job_id: str, epoch: int, total: int = 5) -> EpochCompleted:
    return EpochCompleted(
        job_id=job_id,
        epoch=epoch,
        total_epochs=total,
        train_loss=1.0 / epoch,
        val_loss=1.1 / epoch,
        train_accuracy=0.5 + epoch / 100,
        val_accuracy=0.4 + epoch / 100,
        learning_rate=0.001,
    )


async def recv_json(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    return json.loads(raw)  # type: ignore[no-any-return]


async def recv_until(
    ws: ClientConnection, stop: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Messages up to and including the first that `stop` accepts (overall deadline)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        message = await recv_json(ws, max(deadline - time.monotonic(), 0.01))
        out.append(message)
        if stop(message):
            return out


async def recv_all(ws: ClientConnection, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every message until the server closes the connection (within `timeout`)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                out.append(json.loads(raw))
    return out

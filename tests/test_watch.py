"""`watch`: the terminal client, through a proxy that can drop its connection."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aredis
from support import serve_api, wait_for
from support.ws import epoch_event, make_job

from services.cli.watch import WatchError, socket_url, watch
from shared.emit import AsyncEmitter
from shared.events import BatchProgress, JobCompleted, JobStarted
from shared.settings import Settings


class CuttableProxy:
    """A TCP proxy whose open connections the test can cut, as a flaky network would."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[bytes] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        first = await reader.readline()
        self.requests.append(first)
        up_writer.write(first)
        self._writers += [writer, up_writer]
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            self.cut()
            server.close()
            await server.wait_closed()
            for task in list(self._tasks):
                task.cancel()


def test_socket_url() -> None:
    assert socket_url("http://h:8001", "j", None, None) == "ws://h:8001/ws/training/j"
    assert (
        socket_url("https://h/api/", "j", "t k", "1-2")
        == "wss://h/api/ws/training/j?token=t%20k&after=1-2"
    )


async def test_watch_renders_progress_reconnects_and_returns_final_status(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await make_job(db, epochs=3)
    emitter = AsyncEmitter(redis_client)
    async with serve_api(settings) as base:
        proxy = CuttableProxy(int(base.rsplit(":", 1)[1]))
        async with proxy.serve() as proxied:
            out = io.StringIO()
            watcher = asyncio.create_task(watch(proxied, job, out=out))
            await wait_for(lambda: "queued" in out.getvalue())
            await emitter.emit(JobStarted(job_id=job, total_batches=4))
            await emitter.emit(BatchProgress(job_id=job, epoch=1, batch=2, total_batches=4))
            await emitter.emit(epoch_event(job, 1, total=3))
            await wait_for(lambda: "epoch 1/3:" in out.getvalue())
            proxy.cut()
            await emitter.emit(epoch_event(job, 2, total=3))  # while disconnected
            await wait_for(lambda: len(proxy.requests) == 2)
            await emitter.emit(epoch_event(job, 3, total=3))
            await emitter.emit(JobCompleted(job_id=job, epochs_run=3))
            status = await asyncio.wait_for(watcher, 20)
    assert status == "completed"
    text = out.getvalue()
    assert [text.count(f"epoch {e}/3:") for e in (1, 2, 3)] == [1, 1, 1]
    assert b"after=" in proxy.requests[1]
    assert text.rstrip().splitlines()[-1].endswith("completed")
    assert "\r" not in text  # not a terminal: plain lines


async def test_watch_unknown_job_raises(settings: Settings) -> None:
    async with serve_api(settings) as base:
        with pytest.raises(WatchError, match="no training job"):
            await watch(base, "7b1e1f4e-0000-4000-8000-000000000000", out=io.StringIO())

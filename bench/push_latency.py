"""Push latency: an event's emission → its `training_status` at WebSocket clients.

One real API process (uvicorn, as `heimdall api` runs it) and N concurrent WebSocket clients
in this process (asyncio), all on loopback. The timestamp is taken right before
`AsyncEmitter.emit`, and each client stamps the message when it has read it; every (event,
client) pair is one sample. Levels default to 1, 100 and 1,000 clients.

    .venv/bin/python bench/push_latency.py [--levels 1,100,1000] [--events 100] [--interval 0.1]

The stores are embedded Valkey and PostgreSQL in a temporary directory unless
HEIMDALL_REDIS_URL and HEIMDALL_DATABASE_URL are set. The seed's design polled the database
every 5 s: a mean latency of 2.5 s and a worst case of 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import redis.asyncio as aredis
import websockets

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from services.cli.embedded import embedded_stores  # noqa: E402
from shared.config import TrainingConfig  # noqa: E402
from shared.db import connect, migrate  # noqa: E402
from shared.emit import AsyncEmitter  # noqa: E402
from shared.events import BatchProgress, JobStarted  # noqa: E402
from shared.jobs import insert_job  # noqa: E402
from shared.net import free_port  # noqa: E402
from shared.settings import Settings  # noqa: E402

SERVER = """
import sys, uvicorn
from services.api.app import create_app
from shared.settings import Settings
settings = Settings(redis_url=sys.argv[1], database_url=sys.argv[2], data_dir=sys.argv[3])
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[4]), log_level="warning",
            backlog=4096, ws_per_message_deflate=sys.argv[5] == "1", ws=sys.argv[6])
"""


WS_IMPL = "websockets"


class Stamp(msgspec.Struct):
    event: str
    event_id: str | None = None


_decode = msgspec.json.Decoder(Stamp).decode


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def raise_open_files() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.asynccontextmanager
async def api_process(settings: Settings, deflate: bool) -> AsyncIterator[str]:
    port = free_port()
    args = [str(settings.redis_url), str(settings.database_url), str(settings.data_dir), str(port)]
    args.append("1" if deflate else "0")
    args.append(WS_IMPL)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, *args], cwd=REPO)  # noqa: ASYNC220
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("API process did not start")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base}/health", timeout=1)).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def run_level(
    base: str, job_id: str, emitter: AsyncEmitter, clients: int, events: int, interval: float
) -> list[float]:
    url = f"{base.replace('http', 'ws', 1)}/ws/training/{job_id}"
    sent: dict[str, float] = {}
    samples: list[float] = []
    sockets: list[websockets.ClientConnection] = []
    ready = asyncio.Semaphore(50)

    async def open_one() -> None:
        async with ready:
            ws = await websockets.connect(url, open_timeout=60, max_queue=None)
            await ws.recv()  # connected
            await ws.recv()  # snapshot
            sockets.append(ws)

    await asyncio.gather(*(open_one() for _ in range(clients)))
    received = [0]

    async def read(ws: websockets.ClientConnection) -> None:
        last = None
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                now = time.perf_counter()
                stamp = _decode(raw)
                if stamp.event != "training_status" or stamp.event_id == last:
                    continue  # heartbeats repeat the last event's id
                last = stamp.event_id
                start = sent.get(stamp.event_id or "")
                if start is not None:
                    samples.append(now - start)
                    received[0] += 1

    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    await asyncio.sleep(0.5)
    for batch in range(1, events + 1):
        event = BatchProgress(job_id=job_id, epoch=1, batch=batch, total_batches=events)
        start = time.perf_counter()
        event_id = await emitter.emit(event)
        sent[event_id] = start
        await asyncio.sleep(interval)
    deadline = time.monotonic() + 30
    while received[0] < clients * events and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    missing = clients * events - len(samples)
    if missing:
        print(f"  warning: {missing} messages did not arrive within 30 s", flush=True)
    return samples


def quantile(sorted_samples: list[float], q: float) -> float:
    return sorted_samples[min(len(sorted_samples) - 1, int(q * len(sorted_samples)))]


async def main(args: argparse.Namespace, settings: Settings) -> None:
    assert settings.database_url and settings.redis_url
    conn = await connect(settings.database_url)
    await migrate(conn)
    row = await insert_job(conn, "push latency bench", TrainingConfig(epochs=1))
    await conn.close()
    job_id = str(row["id"])
    client = aredis.Redis.from_url(settings.redis_url)
    emitter = AsyncEmitter(client)
    await emitter.emit(JobStarted(job_id=job_id, total_batches=args.events))
    print(f"machine: {machine()}; open files limit {raise_open_files()}", flush=True)
    rows = []
    print(f"permessage-deflate: {'on' if args.deflate else 'off'}", flush=True)
    async with api_process(settings, args.deflate) as base:
        for level in args.levels:
            samples = sorted(
                await run_level(base, job_id, emitter, level, args.events, args.interval)
            )
            ms = [s * 1000 for s in samples]
            row_ = (
                level,
                len(ms),
                statistics.median(ms),
                quantile(ms, 0.99),
                ms[-1],
                statistics.fmean(ms),
            )
            rows.append(row_)
            print(
                f"{level:>5} clients: {len(ms)} samples, p50 {row_[2]:.1f} ms, "
                f"p99 {row_[3]:.1f} ms, max {row_[4]:.1f} ms, mean {row_[5]:.1f} ms",
                flush=True,
            )
    await client.aclose()
    print("\n| clients | samples | p50 ms | p99 ms | max ms | mean ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for level, n, p50, p99, worst, mean in rows:
        print(f"| {level} | {n} | {p50:.1f} | {p99:.1f} | {worst:.1f} | {mean:.1f} |")
    print("| seed (DB polling every 5 s) | | 2500 | 4950 | 5000 | 2500 |")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100, 1000]
    )
    parser.add_argument("--events", type=int, default=100, help="events per level")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.25,
        help="seconds between events (the worker sends progress about 4 times a second)",
    )
    parser.add_argument(
        "--deflate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="permessage-deflate on the server (uvicorn's default, and what browsers ask for)",
    )
    parser.add_argument(
        "--ws",
        default="websockets",
        help="uvicorn WebSocket implementation (websockets, websockets-sansio, wsproto)",
    )
    args = parser.parse_args()
    global WS_IMPL
    WS_IMPL = args.ws
    env = Settings.from_env()
    with tempfile.TemporaryDirectory(prefix="heimdall-bench-") as tmp:
        base = Settings(redis_url=env.redis_url, database_url=env.database_url, data_dir=Path(tmp))
        with embedded_stores(base) as settings:
            asyncio.run(main(args, settings))


if __name__ == "__main__":
    cli()

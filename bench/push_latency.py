"""Push latency: an event's emission → its `training_status` at WebSocket clients.

`heimdall api` as it runs (uvicorn or Granian, one or more processes on one port) on embedded
stores, and lean clients (picows, only the event id read) in separate processes. Each level
gets a fresh job, so a new connection replays only that job's start, as a viewer of a
recorded job does. The timestamp is taken right before `AsyncEmitter.emit`, and each client
stamps the message when it has read it; every (event, client) pair is one sample. Server and
client CPU seconds are reported separately (/proc of the server's processes; getrusage of
the clients).

    .venv/bin/python bench/push_latency.py [--levels 100,1000,3000] [--processes 1,2]
        [--servers uvicorn,granian] [--events 40] [--interval 0.25] [--client-procs 2]
        [--backlogs 0,1000,5000]

`--backlogs`: what a new connection costs while the recorder lags: the job's snapshot (its
database row) is N events behind its Redis stream, so every new viewer replays those N
events before it is live; 20 viewers connect one after another, timed to their live status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import redis.asyncio as aredis
import websockets

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _machine import describe  # noqa: E402

from services.cli.embedded import embedded_stores  # noqa: E402
from shared.config import TrainingConfig  # noqa: E402
from shared.db import connect, migrate  # noqa: E402
from shared.emit import AsyncEmitter  # noqa: E402
from shared.events import BatchProgress, JobStarted  # noqa: E402
from shared.jobs import insert_job  # noqa: E402
from shared.net import free_port  # noqa: E402
from shared.settings import Settings  # noqa: E402

CLIENTS = Path(__file__).with_name("_push_clients.py")

PIPE_LIMIT = 1 << 26
"""Longest line read from a client process (asyncio's default of 64 KiB is one level's worth
of 500 clients' receive times)."""


def raise_open_files() -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of a process and its children (the worker processes of a multi-process API)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


@contextlib.asynccontextmanager
async def api_process(
    settings: Settings, server: str, processes: int
) -> AsyncIterator[tuple[str, psutil.Process]]:
    port = free_port()
    env = {
        **os.environ,
        "HEIMDALL_REDIS_URL": str(settings.redis_url),
        "HEIMDALL_DATABASE_URL": str(settings.database_url),
        "HEIMDALL_DATA_DIR": str(settings.data_dir),
        "HEIMDALL_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "services.cli.main", "api", "--port", str(port)]
    command += ["--processes", str(processes), "--server", server]
    proc = subprocess.Popen(command, cwd=REPO, env=env)  # noqa: ASYNC220
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
        await asyncio.sleep(1.0 if processes > 1 else 0.2)  # every worker up, not just one
        yield base, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def new_job(settings: Settings, emitter: AsyncEmitter, events: int) -> str:
    assert settings.database_url
    conn = await connect(settings.database_url)
    try:
        job_id = str((await insert_job(conn, "push bench", TrainingConfig(epochs=1)))["id"])
    finally:
        await conn.close()
    await emitter.emit(JobStarted(job_id=job_id, total_batches=events))
    return job_id


async def run_level(
    base: str,
    server: psutil.Process,
    settings: Settings,
    emitter: AsyncEmitter,
    args: argparse.Namespace,
    clients: int,
) -> dict[str, float]:
    job_id = await new_job(settings, emitter, args.events)
    url = f"{base.replace('http', 'ws', 1)}/ws/training/{job_id}"
    procs = []
    share = [
        clients // args.client_procs + (i < clients % args.client_procs)
        for i in range(args.client_procs)
    ]
    for count in share:
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(CLIENTS),
                url,
                str(count),
                cwd=REPO,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                # One JSON line of every receive time: 3,000 clients x 40 events is ~2 MB.
                limit=PIPE_LIMIT,
            )
        )
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            if line.strip() != b"ready":
                raise RuntimeError(f"client process failed: {line!r}")
        await asyncio.sleep(0.5)
        sent: dict[str, float] = {}
        cpu_before = cpu_seconds(server)
        started = time.monotonic()
        for batch in range(1, args.events + 1):
            event = BatchProgress(job_id=job_id, epoch=1, batch=batch, total_batches=args.events)
            at = time.monotonic()
            sent[await emitter.emit(event)] = at
            await asyncio.sleep(max(0.0, started + batch * args.interval - time.monotonic()))
        await asyncio.sleep(args.drain)
        server_cpu = cpu_seconds(server) - cpu_before
        outputs = []
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            outputs.append(json.loads(await asyncio.wait_for(proc.stdout.readline(), 120)))
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
    samples = sorted(
        (t - sent[event_id]) * 1000
        for out in outputs
        for event_id, times in out["received"].items()
        if event_id in sent
        for t in times
    )
    expected = clients * args.events
    return {
        "samples": len(samples),
        "missing": expected - len(samples),
        "p50": statistics.median(samples) if samples else float("nan"),
        "p99": samples[min(len(samples) - 1, int(0.99 * len(samples)))]
        if samples
        else float("nan"),
        "max": samples[-1] if samples else float("nan"),
        "server_cpu_s": server_cpu,
        "server_ms_per_msg": 1000 * server_cpu / max(1, len(samples)),
        "client_cpu_s": sum(out["cpu_s"] for out in outputs),
    }


async def connection_cost(
    base: str, server: psutil.Process, settings: Settings, emitter: AsyncEmitter, backlog: int
) -> dict[str, float]:
    """A job whose snapshot is `backlog` events behind (no recorder): 20 viewers, one by one,
    each timed from connect to the status of the job's newest event."""
    job_id = await new_job(settings, emitter, backlog)
    last = None
    for batch in range(1, backlog + 1):
        last = await emitter.emit(
            BatchProgress(job_id=job_id, epoch=1, batch=batch, total_batches=backlog)
        )
    url = f"{base.replace('http', 'ws', 1)}/ws/training/{job_id}"
    times = []
    cpu_before = cpu_seconds(server)
    for _ in range(20):
        started = time.monotonic()
        async with websockets.connect(url, max_queue=None, open_timeout=60) as ws:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if message.get("event") == "training_status" and message.get("event_id") == last:
                    break
                if last is None and message.get("event") == "training_status":
                    break
        times.append((time.monotonic() - started) * 1000)
    return {
        "p50": statistics.median(times),
        "max": max(times),
        "server_cpu_ms": 1000 * (cpu_seconds(server) - cpu_before) / 20,
    }


async def main(args: argparse.Namespace, settings: Settings) -> None:
    assert settings.database_url and settings.redis_url
    conn = await connect(settings.database_url)
    await migrate(conn)
    await conn.close()
    client = aredis.Redis.from_url(settings.redis_url)
    emitter = AsyncEmitter(client)
    print(f"machine: {describe()}; open files limit {raise_open_files()}", flush=True)
    rate = f"{1 / args.interval:g}/s"
    print(f"{args.events} events at {rate} per level; {args.client_procs} client processes")
    rows = []
    try:
        for server in args.servers:
            for processes in args.processes:
                async with api_process(settings, server, processes) as (base, proc):
                    for level in args.levels:
                        load = os.getloadavg()[0]
                        r = await run_level(base, proc, settings, emitter, args, level)
                        rows.append((server, processes, level, load, r))
                        print(
                            f"{server} x{processes} {level:>5} clients: p50 {r['p50']:.1f} ms,"
                            f" p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms, missing"
                            f" {r['missing']}; server CPU {r['server_cpu_s']:.2f} s"
                            f" ({r['server_ms_per_msg']:.3f} ms/message), clients"
                            f" {r['client_cpu_s']:.2f} s; load {load:.1f}",
                            flush=True,
                        )
                    if processes == args.processes[0]:
                        for backlog in args.backlogs:
                            c = await connection_cost(base, proc, settings, emitter, backlog)
                            print(
                                f"{server} x{processes} new connection, recorder {backlog}"
                                f" events behind: p50 {c['p50']:.1f} ms, max {c['max']:.1f} ms,"
                                f" server CPU {c['server_cpu_ms']:.1f} ms per connection",
                                flush=True,
                            )
    finally:
        await client.aclose()
    print("\n| server | processes | clients | p50 ms | p99 ms | max ms | server CPU ms/msg |"
          " client CPU s | load |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for server, processes, level, load, r in rows:
        print(
            f"| {server} | {processes} | {level} | {r['p50']:.1f} | {r['p99']:.1f} |"
            f" {r['max']:.1f} | {r['server_ms_per_msg']:.3f} | {r['client_cpu_s']:.1f} |"
            f" {load:.1f} |"
        )
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=_ints, default=[100, 1000, 3000])
    parser.add_argument("--processes", type=_ints, default=[1, 2])
    parser.add_argument("--servers", type=lambda s: s.split(","), default=["uvicorn", "granian"])
    parser.add_argument("--events", type=int, default=40, help="events per level")
    parser.add_argument(
        "--interval", type=float, default=0.25,
        help="seconds between events (the worker sends progress about 4 times a second)",
    )  # fmt: skip
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--drain", type=float, default=3.0, help="seconds to wait after the last event"
    )
    parser.add_argument("--backlogs", type=_ints, default=[0, 1000, 5000])
    args = parser.parse_args()
    env = Settings.from_env()
    with tempfile.TemporaryDirectory(prefix="heimdall-bench-") as tmp:
        base = Settings(redis_url=env.redis_url, database_url=env.database_url, data_dir=Path(tmp))
        with embedded_stores(base) as settings:
            asyncio.run(main(args, settings))


if __name__ == "__main__":
    cli()

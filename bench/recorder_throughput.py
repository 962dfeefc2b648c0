"""Recorder throughput: events from the stream to committed rows, next to raw COPY of the rows.

Each run pre-fills the events stream with N events of several jobs (BatchProgress carrying a
realistic number of per-batch points, an EpochCompleted every few events), then runs the
recorder's consume → write → ack loop until the stream is drained, and times it. In the same
run, on the same machine and database, the identical rows (every metric row and every event
row the recorder wrote) are COPYed with asyncpg `copy_records_to_table` into identical empty
tables (same columns, indexes and foreign keys): the ceiling the recorder is measured against.

    .venv/bin/python bench/recorder_throughput.py [--events 20000] [--runs 3]
        [--redis-url URL --database-url DSN]

Without URLs it starts the embedded Valkey and PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis.asyncio as aredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.cli.embedded import embedded_stores
from services.recorder.app import Recorder, tuned_gc
from services.recorder.entries import METRIC_COLUMNS, metric_rows, parse_entry
from services.recorder.settings import RecorderSettings
from services.recorder.store import Store
from services.recorder.stream import EventStream
from shared import keys
from shared.config import TrainingConfig
from shared.db import connect, migrate
from shared.emit import EMIT_SCRIPT
from shared.events import (
    BatchPoint,
    BatchProgress,
    EpochCompleted,
    JobStarted,
    encode_event,
)
from shared.jobs import insert_job
from shared.logs import configure_logging
from shared.settings import Settings

EVENT_COLUMNS = ("event_id", "id_ms", "id_seq", "training_job_id", "type", "timestamp", "payload")


@dataclass
class Run:
    events: int
    metric_rows: int
    recorder_s: float
    copy_s: float
    copy_metrics_s: float

    @property
    def rows(self) -> int:
        return self.events + self.metric_rows

    @property
    def recorder_rows_s(self) -> float:
        return self.rows / self.recorder_s

    @property
    def copy_rows_s(self) -> float:
        return self.rows / self.copy_s


def make_events(jobs: list[str], n: int, points: int, epoch_every: int) -> list[tuple[str, bytes]]:
    """n events spread round-robin over the jobs, as (job id, JSON)."""
    total_batches = points * (epoch_every - 1)
    out: list[tuple[str, bytes]] = []
    state = {job: [1, 0] for job in jobs}
    ts = time.time() - 3600
    for job in jobs:
        out.append((job, encode_event(JobStarted(job_id=job, total_batches=total_batches))))
    for i in range(n - len(jobs)):
        job = jobs[i % len(jobs)]
        epoch, batch = state[job]
        ts += 0.001
        if (i // len(jobs)) % epoch_every == epoch_every - 1:
            event: BatchProgress | EpochCompleted = EpochCompleted(
                job_id=job, epoch=epoch, total_epochs=1000, train_loss=0.4, val_loss=0.5,
                train_accuracy=0.8, val_accuracy=0.7, learning_rate=1e-3, gradient_norm=1.2,
                epoch_time_s=12.5, ts=ts,
            )  # fmt: skip
            state[job] = [epoch + 1, 0]
        else:
            pts = [
                BatchPoint(epoch, batch + k + 1, 0.5 - k * 1e-3, 0.75, 1e-3, 1.1, ts + k * 1e-5)
                for k in range(points)
            ]
            event = BatchProgress(
                job_id=job, epoch=epoch, batch=batch + points, total_batches=total_batches,
                points=pts, ts=ts,
            )  # fmt: skip
            state[job] = [epoch, batch + points]
        out.append((job, encode_event(event)))
    return out


async def prefill(client: aredis.Redis, events: list[tuple[str, bytes]]) -> None:
    """Emit through the real emission script, pipelined (emission speed is not measured)."""
    script = client.register_script(EMIT_SCRIPT)
    for start in range(0, len(events), 1000):
        async with client.pipeline(transaction=False) as pipe:
            for job, data in events[start : start + 1000]:
                ks = [keys.EVENTS_STREAM, keys.job_stream(job), keys.job_channel(job)]
                await script(keys=ks, args=[job, data, 10_000], client=pipe)
            await pipe.execute()


async def drained(client: aredis.Redis, last_id: bytes) -> bool:
    groups = await client.xinfo_groups(keys.EVENTS_STREAM)
    group = next(
        g for g in groups if g["name"] in (keys.RECORDER_GROUP.encode(), keys.RECORDER_GROUP)
    )
    return bool(group["pending"] == 0 and group["last-delivered-id"] == last_id)


async def one_run(redis_url: str, admin_url: str, args: argparse.Namespace, index: int) -> Run:
    name = f"heimdall_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    head, _, query = admin_url.partition("?")
    dsn = head.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")
    client = aredis.Redis.from_url(redis_url)
    try:
        conn = await connect(dsn)
        await migrate(conn)
        jobs = [
            str((await insert_job(conn, f"bench {j}", TrainingConfig(epochs=1000)))["id"])
            for j in range(args.jobs)
        ]
        await client.delete(keys.EVENTS_STREAM, *(keys.job_stream(j) for j in jobs))
        await prefill(client, make_events(jobs, args.events, args.points, args.epoch_every))
        last_id = (await client.xrevrange(keys.EVENTS_STREAM, count=1))[0][0]

        # The identical rows, built before either clock starts.
        raw = await client.xrange(keys.EVENTS_STREAM)
        entries = [parse_entry(eid, fields) for eid, fields in raw]
        metrics = [row for e in entries for row in metric_rows(e)]
        events = [
            (e.event_id, e.id_ms, e.id_seq, e.job_id, e.type, e.timestamp, e.payload)
            for e in entries
        ]
        del raw, entries

        async def recorder_pass() -> float:
            """The recorder's loop, connected and migrated before the clock starts."""
            rs = RecorderSettings(batch_size=args.batch_size, block_ms=50, trim_interval_s=3600)
            stop = asyncio.Event()
            store = Store(dsn, rs)
            await store.connection()
            stream = EventStream(client, f"bench-{index}", rs)
            await stream.ensure_group()
            recorder = Recorder(stream, store, rs, stop)
            with tuned_gc():  # as run_recorder does
                started = time.perf_counter()
                task = asyncio.create_task(recorder.run())
                while not await drained(client, last_id):  # noqa: ASYNC110 (polls Redis)
                    await asyncio.sleep(0.01)
                elapsed = time.perf_counter() - started
                stop.set()
                await task
            await store.close()
            assert recorder.events == len(events) and recorder.metrics == len(metrics)
            return elapsed

        async def copy_pass() -> tuple[float, float]:
            """Raw COPY into identical empty tables; (total, metrics only) seconds."""
            plain = await asyncpg.connect(dsn)  # no JSON codec: payload goes in as emitted
            try:
                for table in ("training_metrics", "training_events"):
                    await plain.execute(
                        f"CREATE TABLE bench_{table} (LIKE {table} INCLUDING ALL);"
                        f" ALTER TABLE bench_{table} ADD FOREIGN KEY (training_job_id)"
                        " REFERENCES training_jobs(id) ON DELETE CASCADE"
                    )
                t0 = time.perf_counter()
                await plain.copy_records_to_table(
                    "bench_training_metrics", records=metrics, columns=METRIC_COLUMNS
                )
                t1 = time.perf_counter()
                await plain.copy_records_to_table(
                    "bench_training_events", records=events, columns=EVENT_COLUMNS
                )
                return time.perf_counter() - t0, t1 - t0
            finally:
                await plain.close()

        # Alternate which goes first, so that a drift in machine load favours neither.
        if index % 2:
            copy_s, copy_metrics_s = await copy_pass()
            recorder_s = await recorder_pass()
        else:
            recorder_s = await recorder_pass()
            copy_s, copy_metrics_s = await copy_pass()
        await conn.close()
        return Run(len(events), len(metrics), recorder_s, copy_s, copy_metrics_s)
    finally:
        await client.delete(keys.EVENTS_STREAM)
        await client.aclose()
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def versions(redis_url: str, admin_url: str) -> tuple[str, str]:
    conn = await asyncpg.connect(admin_url)
    pg = await conn.fetchval("SHOW server_version")
    await conn.close()
    client = aredis.Redis.from_url(redis_url)
    info = await client.info("server")
    await client.aclose()
    server = "valkey " + info["valkey_version"] if "valkey_version" in info else "redis"
    return str(pg), f"{server} {info.get('redis_version', '')}".strip()


async def bench(redis_url: str, admin_url: str, args: argparse.Namespace) -> None:
    pg, redis_version = await versions(redis_url, admin_url)
    runs = []
    for i in range(args.runs):
        run = await one_run(redis_url, admin_url, args, i)
        runs.append(run)
        print(
            f"run {i + 1}: {run.events} events + {run.metric_rows} metric rows;"
            f" recorder {run.recorder_s:.2f} s = {run.events / run.recorder_s:,.0f} events/s,"
            f" {run.recorder_rows_s:,.0f} rows/s; raw COPY {run.copy_rows_s:,.0f} rows/s"
            f" (metrics alone {run.metric_rows / run.copy_metrics_s:,.0f} rows/s);"
            f" ratio {run.recorder_rows_s / run.copy_rows_s:.0%}",
            flush=True,
        )
    med = statistics.median
    events_s = med(r.events / r.recorder_s for r in runs)
    rows_s = med(r.recorder_rows_s for r in runs)
    copy_s = med(r.copy_rows_s for r in runs)
    ratio = med(r.recorder_rows_s / r.copy_rows_s for r in runs)
    print()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; PostgreSQL {pg}; {redis_version}")
    print(f"load average at the end (1, 5, 15 min): {load}")
    print(
        f"workload: {args.events} events over {args.jobs} jobs, {args.points} points per"
        f" BatchProgress, an EpochCompleted every {args.epoch_every}; batch size"
        f" {args.batch_size}; median of {args.runs} runs"
    )
    print(f"recorder: {events_s:,.0f} events/s, {rows_s:,.0f} rows/s (stream to committed rows)")
    print(f"raw COPY of the same rows: {copy_s:,.0f} rows/s")
    print(f"ratio: {ratio:.0%} (target >= 50%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--points", type=int, default=16, help="points per BatchProgress")
    parser.add_argument("--epoch-every", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=RecorderSettings().batch_size)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--redis-url")
    parser.add_argument("--database-url", help="an admin DSN: each run creates its database")
    args = parser.parse_args()
    configure_logging("WARNING")
    if args.redis_url and args.database_url:
        asyncio.run(bench(args.redis_url, args.database_url, args))
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings(
            data_dir=Path(tmp), redis_url=args.redis_url, database_url=args.database_url
        )
        with embedded_stores(base) as settings:
            assert settings.redis_url and settings.database_url
            asyncio.run(bench(settings.redis_url, settings.database_url, args))


if __name__ == "__main__":
    main()

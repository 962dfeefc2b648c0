"""Latency of GET /training/jobs/{id}/metrics, cold (computed, not from the response cache):
a 50k-point per-batch series (500 epochs x 100 batches) in full and downsampled to 1,000
points, served from the recorder's read-optimised chunks and, side by side in the same run and
database, from the rows (a series without chunks); and a 1,000,000-point series (1,000 epochs x
1,000 batches) from the chunks. Everything is measured first without planner statistics
(autovacuum off on the table, no ANALYZE: a job right after it started), then after ANALYZE.
One real API process (as `heimdall api` runs it) on embedded stores.

    .venv/bin/python bench/metrics_endpoint.py [--requests 20] [--no-million] [--old-query]

`--old-query` also times, once, the downsampling query this endpoint used before the chunks
(quadratic without statistics; stopped after 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
from _machine import describe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.cli.embedded import embedded_stores
from services.recorder.series import rebuild_series
from shared.config import TrainingConfig
from shared.db import connect, migrate
from shared.jobs import insert_job, utcnow
from shared.net import free_port
from shared.settings import Settings

OLD_QUERY = """
SELECT coalesce(json_agg(r), '[]'::json)::text FROM (SELECT epoch, batch, train_loss
FROM (SELECT max(epoch) AS epoch, max(batch) AS batch, avg(train_loss) AS train_loss
      FROM (SELECT m.*, ((m.epoch - 1)::bigint * c.per_epoch + m.batch - 1) * $3 / c.n AS bucket
            FROM training_metrics m, (SELECT count(*) AS n, max(batch) AS per_epoch
                                      FROM training_metrics WHERE training_job_id = $1
                                      AND phase = $2) c
            WHERE m.training_job_id = $1 AND m.phase = $2) b
      GROUP BY bucket ORDER BY bucket) rows) r
"""
"""The seed-era downsampling query (its shape; fewer columns): a per-row count without stats."""


SEED_COLUMNS = (
    "timestamp", "id", "training_job_id", "epoch", "batch", "phase", "train_loss",
    "train_accuracy", "learning_rate", "gradient_norm",
)  # fmt: skip


async def seed(conn: asyncpg.Connection, epochs: int, per_epoch: int, chunks: bool) -> str:
    """A job with epochs x per_epoch batch points; `chunks`: also its read-optimised form, as
    the recorder writes it."""
    row = await insert_job(conn, "bench", TrainingConfig(epochs=epochs))
    job = row["id"]
    base = utcnow()
    step = 200_000
    total = epochs * per_epoch
    for start in range(0, total, step):
        await conn.copy_records_to_table(
            "training_metrics",
            columns=SEED_COLUMNS,
            records=[
                (
                    base + timedelta(milliseconds=i),
                    uuid.uuid4(),
                    job,
                    i // per_epoch + 1,
                    i % per_epoch + 1,
                    "train",
                    2.0 / (1 + i / 1000),
                    0.5 + i * 1e-7,
                    1e-3,
                    1.0 + (i % 13) * 0.01,
                )
                for i in range(start, min(total, start + step))
            ],
        )
    if chunks:
        async with conn.transaction():
            await rebuild_series(conn, job, "train")
    return str(job)


def _touch(database_url: str, job: str, i: int) -> None:
    """A new last_event_id, as the recorder sets with every batch: the cache must recompute."""

    async def run() -> None:
        conn = await connect(database_url)
        try:
            await conn.execute(
                "UPDATE training_jobs SET last_event_id = $2 WHERE id = $1",
                uuid.UUID(job),
                f"{i + 1}-0",
            )
        finally:
            await conn.close()

    asyncio.run(run())


def timed(
    client: httpx.Client,
    url: str,
    params: dict[str, str],
    n: int,
    invalidate: Callable[[int], None],
) -> tuple[float, int, int]:
    """Median latency (ms) with the job's last event id moved before every request (not
    timed), so the API's response cache cannot answer it; points and bytes of the answer."""
    client.get(url, params=params).raise_for_status()  # warm-up: connections, code paths
    times = []
    size = body = 0
    for i in range(n):
        invalidate(i)
        started = time.perf_counter()
        resp = client.get(url, params=params)
        times.append((time.perf_counter() - started) * 1000)
        resp.raise_for_status()
        body = len(resp.content)
        if i == 0:
            metrics = resp.json()["metrics"]
            size = len(metrics["epoch"]) if isinstance(metrics, dict) else len(metrics)
    return statistics.median(times), size, body


async def old_query_seconds(database_url: str, job: str) -> str:
    conn = await connect(database_url)
    try:
        await conn.execute("SET statement_timeout = '20s'")
        started = time.perf_counter()
        try:
            await conn.fetchval(OLD_QUERY, uuid.UUID(job), "train", 1000)
        except asyncpg.QueryCanceledError:
            return "> 20 s (cancelled)"
        return f"{time.perf_counter() - started:.2f} s"
    finally:
        await conn.close()


CASES = [
    ("rows", {"phase": "train"}),
    ("columns", {"phase": "train", "format": "columns"}),
    ("1,000 points", {"phase": "train", "points": "1000"}),
]


def main() -> None:  # noqa: C901 - one linear script
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--million", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--old-query", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="heimdall-bench-"))
    results: dict[tuple[str, str, str], tuple[float, int, int]] = {}
    old: list[str] = []
    try:
        with embedded_stores(Settings(data_dir=root)) as settings:
            db_url = settings.database_url
            assert db_url and settings.redis_url

            async def prepare() -> dict[str, str]:
                conn = await connect(db_url)
                try:
                    await migrate(conn)
                    await conn.execute(
                        "ALTER TABLE training_metrics SET (autovacuum_enabled = false)"
                    )
                    rows_job = await seed(conn, 500, 100, False)
                    if args.old_query:  # on a table that holds just this job, as a fresh one
                        old.append(await old_query_seconds(db_url, rows_job))
                    jobs = {"50k, chunks": await seed(conn, 500, 100, True), "50k, rows": rows_job}
                    if args.million:
                        jobs["1M, chunks"] = await seed(conn, 1000, 1000, True)
                    return jobs
                finally:
                    await conn.close()

            jobs = asyncio.run(prepare())
            port = free_port()
            env = {
                **os.environ,
                "HEIMDALL_REDIS_URL": settings.redis_url,
                "HEIMDALL_DATABASE_URL": db_url,
                "HEIMDALL_DATA_DIR": str(root),
                "HEIMDALL_PORT": str(port),
                "HEIMDALL_LOG_LEVEL": "WARNING",
            }
            proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "api"], env=env)
            try:
                base = f"http://127.0.0.1:{port}"
                with httpx.Client(timeout=120) as client:
                    deadline = time.monotonic() + 60
                    while True:
                        try:
                            client.get(f"{base}/health")
                            break
                        except httpx.HTTPError:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.1)
                    for stats in ("no statistics", "analysed"):
                        if stats == "analysed":
                            asyncio.run(_analyse(db_url))
                        for what, job in jobs.items():
                            url = f"{base}/api/v1/training/jobs/{job}/metrics"
                            for name, params in CASES:
                                n = args.requests
                                if what.startswith("1M") and name != "1,000 points":
                                    n = max(3, n // 4)
                                results[(stats, what, name)] = timed(
                                    client,
                                    url,
                                    params,
                                    n,
                                    lambda i, job=job: _touch(db_url, job, i),
                                )
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {describe()}; load average at the end (1, 5, 15 min): {load}")
    print(f"cold requests (response cache bypassed), median of {args.requests} (1M full: fewer)")
    if old:
        print(f"  previous downsampling query, 50k rows, no statistics: {old[0]}")
    for (stats, what, name), (ms, size, body) in results.items():
        print(
            f"  {stats:<14} {what:<12} {name:<13} {size:>8} points {body / 1e6:7.2f} MB"
            f" {ms:8.1f} ms"
        )


async def _analyse(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute("ANALYZE training_metrics; ANALYZE metric_chunks")
    finally:
        await conn.close()


if __name__ == "__main__":
    main()

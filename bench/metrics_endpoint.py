"""Latency of GET /training/jobs/{id}/metrics on a 50k-point per-batch series: in full, and
downsampled to 1,000 points. One real API process (as `heimdall api` runs it) on embedded stores.

    .venv/bin/python bench/metrics_endpoint.py [--points 50000] [--requests 30]
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

import httpx
from _machine import describe

from services.cli.embedded import embedded_stores
from shared.config import TrainingConfig
from shared.db import connect, migrate
from shared.jobs import insert_job, utcnow
from shared.net import free_port
from shared.settings import Settings


async def seed(database_url: str, points: int) -> str:
    conn = await connect(database_url)
    try:
        await migrate(conn)
        row = await insert_job(conn, "bench", TrainingConfig(epochs=500))
        job = row["id"]
        base = utcnow()
        per_epoch = 100
        await conn.copy_records_to_table(
            "training_metrics",
            columns=[
                "timestamp",
                "id",
                "training_job_id",
                "epoch",
                "batch",
                "phase",
                "train_loss",
                "train_accuracy",
                "learning_rate",
                "gradient_norm",
            ],
            records=[
                (
                    base + timedelta(milliseconds=i),
                    uuid.uuid4(),
                    job,
                    i // per_epoch + 1,
                    i % per_epoch + 1,
                    "train",
                    2.0 / (1 + i / 1000),
                    0.5,
                    1e-3,
                    1.0,
                )
                for i in range(points)
            ],
        )
        await conn.execute("ANALYZE training_metrics")
        return str(job)
    finally:
        await conn.close()


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
    invalidate: Callable[[int], None] | None,
) -> tuple[float, int]:
    """Median latency; with `invalidate`, the job's last event id moves before every request
    (not timed), so the API's response cache cannot answer it."""
    client.get(url, params=params)  # warm-up
    times = []
    size = 0
    for i in range(n):
        if invalidate is not None:
            invalidate(i)
        started = time.perf_counter()
        resp = client.get(url, params=params)
        times.append((time.perf_counter() - started) * 1000)
        resp.raise_for_status()
        metrics = resp.json()["metrics"]
        size = len(metrics["epoch"]) if isinstance(metrics, dict) else len(metrics)
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="heimdall-bench-"))
    try:
        with embedded_stores(Settings(data_dir=root)) as settings:
            assert settings.database_url and settings.redis_url
            job = asyncio.run(seed(settings.database_url, args.points))
            port = free_port()
            env = {
                **os.environ,
                "HEIMDALL_REDIS_URL": settings.redis_url,
                "HEIMDALL_DATABASE_URL": settings.database_url,
                "HEIMDALL_DATA_DIR": str(root),
                "HEIMDALL_PORT": str(port),
                "HEIMDALL_LOG_LEVEL": "WARNING",
            }
            proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "api"], env=env)
            try:
                base = f"http://127.0.0.1:{port}"
                with httpx.Client(timeout=30) as client:
                    deadline = time.monotonic() + 60
                    while True:
                        try:
                            client.get(f"{base}/health")
                            break
                        except httpx.HTTPError:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.1)
                    url = f"{base}/api/v1/training/jobs/{job}/metrics"
                    db_url = settings.database_url
                    results = {
                        (name, cold): timed(
                            client,
                            url,
                            params,
                            args.requests,
                            (lambda i: _touch(db_url, job, i)) if cold else None,
                        )
                        for name, params in [
                            ("rows", {"phase": "train"}),
                            ("columns", {"phase": "train", "format": "columns"}),
                            ("1,000 points", {"phase": "train", "points": "1000"}),
                        ]
                        for cold in (True, False)
                    }
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {describe()}")
    print(f"{args.points}-point batch series, median of {args.requests} requests each")
    for (name, cold), (ms, size) in results.items():
        cache = "cold (computed)" if cold else "warm (cached)"
        print(f"  {name:<13} {cache:<16} {size:>6} points  {ms:7.1f} ms")


if __name__ == "__main__":
    main()

"""Prediction latency over HTTP: POST /training/jobs/{id}/predict with one 0.5 s recording
(p50/p99, warm: the job's ONNX session already cached) and with a batch of 100 in one request.

The model is real: convnext_atto trained for one epoch here on synthetic recordings of 0.5 s at
8 kHz (tests' TINY features), exported to ONNX as a job exports it. The API runs as
`heimdall api` in its own process on embedded Valkey and PostgreSQL; the client is httpx.

    .venv/bin/python bench/predict_latency.py [--requests 300] [--batches 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import torch
from _machine import describe

from services.cli.embedded import embedded_stores
from services.worker.progress import ListSink, NeverStop
from services.worker.run import TrainSpec
from services.worker.trainer import train
from shared.config import TrainingConfig
from shared.datasets import Recording
from shared.db import connect, migrate
from shared.jobs import insert_job
from shared.net import free_port
from shared.settings import Settings
from shared.synth import synth_dataset
from shared.wavio import write_wav

REPO = Path(__file__).resolve().parents[1]

CONFIG = {
    "model_architecture": "convnext_atto",
    "pretrained": False,
    "batch_size": 16,
    "num_workers": 0,
    "n_fft": 256,
    "hop_length": 64,
    "n_mels": 32,
    "accelerator": "cpu",
    "min_snr_db": -100.0,
    "only_approved": False,
    "warmup_epochs": 0,
    "epochs": 1,
    "seed": 1,
}


def recordings(root: Path, count: int) -> list[Recording]:
    out = []
    for rec in synth_dataset(count, seed=3, duration_s=0.5):
        rid = str(uuid.uuid4())
        path = root / rec.label / f"{rid}.wav"
        write_wav(
            path, rec.samples[..., 0] if rec.samples.ndim > 1 else rec.samples, rec.sample_rate
        )
        out.append(Recording(rid, str(path), rec.label, rec.snr_db, True, rec.sample_rate, 0.5, 1))
    return out


async def prepare(settings: Settings, root: Path) -> tuple[str, list[Path]]:
    """A completed job with a trained ONNX model; returns its id and the recordings."""
    assert settings.database_url
    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
        row = await insert_job(conn, "bench", TrainingConfig(**CONFIG))
        job_id = str(row["id"])
        recs = recordings(root / "rec", 70)
        spec = TrainSpec(
            job_id=job_id,
            config=TrainingConfig(**CONFIG),
            recordings=recs,
            out_dir=settings.artifacts_dir / job_id,
            progress_interval_s=0.0,
        )
        done = train(spec, ListSink(), NeverStop()).completed
        await conn.execute(
            "UPDATE training_jobs SET status = 'completed', onnx_model_path = $2, best_epoch = $3"
            " WHERE id = $1",
            row["id"],
            done.onnx_model_path,
            done.best_epoch,
        )
    finally:
        await conn.close()
    return job_id, [Path(r.path) for r in recs]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(base: str, job_id: str, files: list[Path], requests: int, batches: int) -> None:
    url = f"{base}/api/v1/training/jobs/{job_id}/predict"
    one = [("files", (files[0].name, files[0].read_bytes(), "audio/wav"))]
    hundred = [
        ("files", (f"{i}-{p.name}", p.read_bytes(), "audio/wav"))
        for i, p in enumerate((files * 2)[:100])
    ]
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(20):  # warm: session cached, code paths hot
            warm = await client.post(url, files=one)
            if warm.status_code != 200:
                raise RuntimeError(f"predict: {warm.status_code} {warm.text}")
        single = []
        for _ in range(requests):
            started = time.perf_counter()
            resp = await client.post(url, files=one)
            single.append(time.perf_counter() - started)
            resp.raise_for_status()
        batch = []
        for _ in range(batches):
            started = time.perf_counter()
            resp = await client.post(url, files=hundred)
            batch.append(time.perf_counter() - started)
            resp.raise_for_status()
            assert len(resp.json()["predictions"]) == 100
    size = len(one[0][1][1])
    p50, p99 = 1000 * statistics.median(single), 1000 * percentile(single, 0.99)
    print(f"machine: {describe()}")
    print(f"one 0.5 s recording ({size} bytes), {requests} requests, warm:")
    print(f"  p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"batch of 100 in one request, {batches} requests:")
    med = statistics.median(batch)
    print(f"  median {med:.3f} s ({100 / med:.0f} recordings/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(data_dir=root / "data")
        with embedded_stores(settings) as settings:
            job_id, files = asyncio.run(prepare(settings, root))
            onnx = settings.artifacts_dir / job_id / "model.onnx"
            print(f"model.onnx: {onnx.stat().st_size / 1e6:.2f} MB")
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
            env.update(
                HEIMDALL_REDIS_URL=settings.redis_url or "",
                HEIMDALL_DATABASE_URL=settings.database_url or "",
                HEIMDALL_DATA_DIR=str(settings.data_dir),
                HEIMDALL_LOG_LEVEL="WARNING",
            )
            api = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "api", "--port", str(port)],
                env=env,
                cwd=REPO,  # this tree's code, not an installed copy
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline or api.poll() is not None:
                        raise RuntimeError("the API did not start")
                    time.sleep(0.2)
                asyncio.run(measure(base, job_id, files, args.requests, args.batches))
            finally:
                api.terminate()
                api.wait(30)


if __name__ == "__main__":
    main()

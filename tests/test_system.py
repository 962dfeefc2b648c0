"""The whole system in one test process: REST API, an arq worker training for real (in its own
process), and the recorder writing PostgreSQL. Nothing is faked: every number a client reads
went through Redis streams, a training process and the recorder."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from arq.connections import RedisSettings, create_pool
from arq.jobs import Job
from support import TINY, running_system, wait_for

from services.tracking import TrackingSettings
from shared import keys
from shared.datasets import write_synthetic
from shared.settings import Settings
from shared.storage import open_store

pytestmark = [
    pytest.mark.slow,
    # arq 0.28's Worker.close() calls redis' deprecated `close()`; nothing of ours.
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]

JOBS = "/api/v1/training/jobs"
SMALL = {
    **TINY,
    "min_snr_db": 0.0,
    "only_approved": True,
    "dataset": "sys",
    "warmup_epochs": 1,
    "learning_rate": 0.001,
    "seed": 3,
}


@pytest.fixture
def mlflow_uri(settings: Settings) -> str:
    """Jobs in these tests are also tracked in a file-based MLflow (and TensorBoard)."""
    return (settings.data_dir.parent / "mlruns").resolve().as_uri()


@pytest.fixture
async def system(
    settings: Settings, db: asyncpg.Connection, mlflow_uri: str
) -> AsyncIterator[httpx.AsyncClient]:
    await write_synthetic(db, open_store(settings), "sys", 70, seed=2, duration_s=0.25)
    async with running_system(settings, TrackingSettings(mlflow_uri=mlflow_uri)) as client:
        yield client


async def _job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    return (await client.get(f"{JOBS}/{job_id}")).json()["job"]  # type: ignore[no-any-return]


async def test_job_trains_to_completion_through_the_whole_system(
    system: httpx.AsyncClient, settings: Settings, mlflow_uri: str
) -> None:
    created = (
        await system.post(JOBS, json={"job_name": "e2e", "config": {**SMALL, "epochs": 3}})
    ).json()
    job_id = created["id"]

    async def finished() -> dict[str, Any] | None:
        job = await _job(system, job_id)
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    job = await wait_for(finished, timeout=240, what="the job to finish")
    assert job["status"] == "completed", job["error_message"]
    assert job["current_epoch"] == 3 and job["progress_percent"] == 100.0
    held_out = job["val_samples"] + job["test_samples"]
    assert job["dataset_size"] == job["train_samples"] + held_out > 0
    assert job["best_epoch"] in (1, 2, 3) and job["best_val_loss"] is not None
    assert job["started_at"] and job["completed_at"]

    epochs = (await system.get(f"{JOBS}/{job_id}/metrics")).json()["metrics"]
    assert [m["epoch"] for m in epochs] == [1, 2, 3]
    assert all(m["val_loss"] is not None and m["learning_rate"] > 0 for m in epochs)
    batches = (await system.get(f"{JOBS}/{job_id}/metrics", params={"phase": "train"})).json()
    assert len(batches["metrics"]) == 3 * job["total_batches"]

    events = (await system.get(f"{JOBS}/{job_id}/events")).json()["events"]
    types = [e["event"]["type"] for e in events]
    assert types[:2] == ["job_queued", "job_started"] and types[-1] == "job_completed"
    assert types.count("epoch_completed") == 3

    onnx = await system.get(f"{JOBS}/{job_id}/artifacts/onnx")
    assert onnx.status_code == 200 and len(onnx.content) > 10_000
    checkpoint = await system.get(f"{JOBS}/{job_id}/artifacts/checkpoint")
    assert checkpoint.status_code == 200

    # Tracked on the side: the MLflow run named in the job row, and TensorBoard files.
    from mlflow.tracking import MlflowClient

    assert job["mlflow_run_id"]
    client = MlflowClient(tracking_uri=mlflow_uri)

    async def logged() -> bool:
        history = client.get_metric_history(job["mlflow_run_id"], "val_loss")
        return len(history) == 3

    await wait_for(logged, timeout=30, what="MLflow to have every epoch")
    run = client.get_run(job["mlflow_run_id"])
    assert run.data.params["epochs"] == "3"
    assert list((settings.data_dir / "tensorboard" / job_id).glob("events.out.tfevents.*"))


async def test_cancel_through_the_api_stops_the_worker(
    system: httpx.AsyncClient, settings: Settings
) -> None:
    config = {**SMALL, "epochs": 50}
    created = (await system.post(JOBS, json={"job_name": "long", "config": config})).json()
    job_id = created["id"]

    async def training() -> bool:
        return bool((await _job(system, job_id))["current_batch"])

    await wait_for(training, timeout=120, what="training to start")
    resp = await system.post(f"{JOBS}/{job_id}/cancel")
    assert resp.status_code == 200 and resp.json()["job"]["status"] == "cancelled"
    started = time.monotonic()
    pool = await create_pool(RedisSettings.from_dsn(settings.redis_url or ""))
    try:
        await Job(created["celery_task_id"], pool, _queue_name=keys.ARQ_QUEUE).result(
            timeout=10, poll_delay=0.05
        )
    finally:
        await pool.aclose()
    assert time.monotonic() - started < 5  # the worker let go of the job (target: 2 s)

    job = await _job(system, job_id)
    assert job["status"] == "cancelled" and job["current_epoch"] < 50
    events = (await system.get(f"{JOBS}/{job_id}/events")).json()["events"]
    assert "job_completed" not in [e["event"]["type"] for e in events]

"""A newcomer's papercuts (issue 20), each as a user meets it: real commands, real stores."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aredis
import websockets
from support import serve_api, wait_for
from support.cli import REPO, run_heimdall, service_env
from support.recorder import drained, recorder
from support.ws import make_job, ws_url

from services.cli.watch import ProgressLine
from shared import workers
from shared.capabilities import WorkerInfo
from shared.emit import AsyncEmitter
from shared.events import BatchPoint, BatchProgress, JobStarted
from shared.settings import Settings


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[str]:
    async with serve_api(settings) as base:
        yield base


async def run(settings: Settings, *args: str) -> tuple[int | None, bytes, bytes]:
    """`heimdall ARGS` as a subprocess, without blocking the API this loop serves:
    (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        *args,
        cwd=REPO,
        env=service_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out, err


async def heimdall(settings: Settings, *args: str) -> str:
    """`heimdall ARGS`'s output (stdout, then stderr); it must succeed."""
    code, out, err = await run(settings, *args)
    assert code == 0, (out + err).decode()
    return (out + err).decode()


def test_help_names_the_tensorboard_extra() -> None:
    for args in (["--help"], ["tensorboard", "--help"]):
        out = run_heimdall(Settings(), *args).stdout
        assert "heimdall-training[tensorboard]" in out and "extra" in out, out


async def test_jobs_list_shows_a_dash_for_missing_values(
    settings: Settings, api: str, db: asyncpg.Connection
) -> None:
    job = await make_job(db)
    out = await heimdall(settings, "jobs", "list", "--url", api)
    (line,) = [x for x in out.splitlines() if x.startswith(job)]
    assert "val_loss        —" in line and "nan" not in out.lower(), out


async def test_workers_command_prints_each_worker(
    settings: Settings, api: str, redis_client: aredis.Redis
) -> None:
    assert "no worker is connected" in await heimdall(settings, "workers", "--url", api)
    info = WorkerInfo(
        id="gpu-box:42",
        host="gpu-box",
        pid=42,
        accelerators=["cpu", "gpu"],
        gpu_count=2,
        gpu_names=["H100"],
        cpu_threads=32,
        memory_bytes=64 * 2**30,
        torch_version="2.14.1",
        cuda_version="13.0",
        pretrained_cached={"convnext_tiny": True},
        running=["j1"],
        started_at=time.time(),
    )
    await workers.announce(redis_client, info, ttl_s=30)
    out = await heimdall(settings, "workers", "--url", api)
    assert "gpu-box:42  2 gpu (H100)  32 threads  64.0 GiB  jobs 1/1" in out, out
    assert "ImageNet weights: cached: convnext_tiny" in out and "running j1" in out, out


async def test_replay_says_where_to_watch(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await make_job(db)
    await AsyncEmitter(redis_client).emit(JobStarted(job_id=job, total_batches=4))
    out = await heimdall(settings, "replay", job, "--speed", "100")
    lines = out.splitlines()
    ws_line = next(i for i, x in enumerate(lines) if f"/ws/replay/{job}" in x)
    assert lines[ws_line].split()[-1] == f"ws://127.0.0.1:8001/ws/replay/{job}"
    assert f"http://127.0.0.1:8001/#/jobs/{job}?replay=1" in out
    # The links come before the replay ends, so a frontend can connect in time.
    assert ws_line < next(i for i, x in enumerate(lines) if x.startswith("replayed 1 events"))


def test_watch_labels_each_metric_and_shows_the_queue_place() -> None:
    import io

    view = ProgressLine(io.StringIO())
    base: dict[str, Any] = {"current_epoch": 3, "total_epochs": 5, "progress_percent": 40.0}
    done = view.line(
        {**base, "status": "completed", "metrics": {"train_loss": 0.5, "val_accuracy": 0.875}}
    )
    assert "train loss 0.5000" in done and "val acc 87.5%" in done, done
    live = view.line(
        {**base, "status": "running", "batch_loss": 0.25, "batch_accuracy": 0.5, "metrics": {}}
    )
    assert "batch loss 0.2500" in live and "batch acc 50.0%" in live, live
    queued = view.line(
        {
            **base,
            "status": "queued",
            "queue_position": 2,
            "queue_length": 3,
            "waiting_for": "1 job ahead of it",
        }
    )
    assert "position 2 of 3, waiting for 1 job ahead of it" in queued, queued


async def test_first_websocket_snapshot_has_the_loss_of_its_current_batch(
    settings: Settings, api: str, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await make_job(db)
    emitter = AsyncEmitter(redis_client)

    def point(batch: int) -> BatchPoint:
        return BatchPoint(1, batch, 2.0 / batch, 0.1 * batch, 0.001, None, time.time())

    async with recorder(settings):
        await emitter.emit(JobStarted(job_id=job, total_batches=4))
        for batch in (1, 2):
            await emitter.emit(
                BatchProgress(
                    job_id=job, epoch=1, batch=batch, total_batches=4, points=[point(batch)]
                )
            )
        await wait_for(lambda: drained(redis_client), what="the recorder to catch up")
    row = await db.fetchrow("SELECT current_batch FROM training_jobs WHERE id = $1::uuid", job)
    assert row is not None and row["current_batch"] == 2
    async with websockets.connect(ws_url(api, job)) as ws:
        assert json.loads(await ws.recv())["event"] == "connected"
        snapshot = json.loads(await ws.recv())
    assert snapshot["current_batch"] == 2
    assert snapshot["batch_loss"] == pytest.approx(1.0)  # batch 2's, as the events say
    assert snapshot["batch_accuracy"] == pytest.approx(0.2)


async def test_a_user_caused_failure_is_a_warning_without_traceback(
    settings: Settings, db: asyncpg.Connection, sync_redis: Any, dataset: str, tmp_path: Any
) -> None:
    """`init_from_job` naming a job without weights fails inside the training process: the
    user's to fix, so the worker logs the message at warning level and no traceback."""
    import uuid

    from support.worker import events_of, small_config, submit, worker_process

    from shared.events import JobFailed

    job = await submit(settings, db, small_config(init_from_job=str(uuid.uuid4())))
    with worker_process(settings, tmp_path / "worker.log", HEIMDALL_LOG_JSON="1") as worker:

        def failed() -> Any:
            return next((e for e in events_of(sync_redis, job) if isinstance(e, JobFailed)), None)

        event = await wait_for(failed, timeout=180, what=f"the job to fail ({worker.log})")
    lines = [json.loads(x) for x in worker.log.read_text().splitlines() if x.startswith("{")]
    (line,) = [x for x in lines if x.get("event") == "training cannot run"]
    assert line["level"] == "warning" and line["job_id"] == job
    assert line["error"] == event.error_message
    assert not [x for x in lines if x.get("level") in ("error", "critical")], lines
    assert "Traceback" not in worker.log.read_text()


async def test_jobs_submit_shows_the_refusal_and_queues_anyway_when_asked(
    settings: Settings, api: str, redis_client: aredis.Redis
) -> None:
    cpu_only = WorkerInfo(id="cpu-box:7", host="cpu-box", pid=7, accelerators=["cpu"])
    await workers.announce(redis_client, cpu_only, ttl_s=30)
    args = ["jobs", "submit", "--name", "gpu", "--set", 'accelerator="gpu"', "--url", api]
    code, out, err = await run(settings, *args)
    assert code == 1 and out == b"", out
    assert err.decode().startswith("error 422: config.accelerator:"), err
    job_id = (await heimdall(settings, *args, "--queue-anyway")).strip()
    assert len(job_id) == 36

"""Workers announce themselves, jobs are admitted by what they can run, and a worker takes only
what it can run: real `heimdall worker` processes against the real API and stores."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
import torch
import websockets
from support import TINY, serve_api, wait_for
from support.worker import events_of, worker_process
from support.ws import ws_url

from shared import keys
from shared.events import JobFailed, JobStarted, QueuedUnrunnable
from shared.settings import Settings

JOBS = "/api/v1/training/jobs"
CPU_JOB: dict[str, Any] = {**TINY, "dataset": "synth", "seed": 7, "epochs": 1}
GPU_JOB: dict[str, Any] = {**CPU_JOB, "accelerator": "gpu"}

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="these tests need a machine without a GPU"
)


@pytest.fixture
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_api(settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield client


async def listed(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    resp = await http.get("/api/v1/workers")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["total"] == len(body["workers"])
    return list(body["workers"])


async def submit(http: httpx.AsyncClient, config: dict[str, Any], **params: str) -> httpx.Response:
    return await http.post(JOBS, json={"job_name": "w", "config": config}, params=params)


async def job(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    resp = await http.get(f"{JOBS}/{job_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["job"])


async def test_a_worker_appears_within_its_heartbeat_and_vanishes_after_kill_9(
    settings: Settings, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert await listed(http) == []
    with worker_process(settings, tmp_path / "worker.log") as tree:
        found = await wait_for(
            lambda: listed(http), timeout=120, what=f"the worker in /workers ({tree.log})"
        )
        (worker,) = found
        assert worker["pid"] == tree.proc.pid
        assert worker["id"].endswith(f":{tree.proc.pid}")
        assert worker["accelerators"] == ["cpu"] and worker["gpu_count"] == 0
        assert worker["cpu_threads"] == len(os.sched_getaffinity(0))
        assert worker["memory_bytes"] == psutil.virtual_memory().total
        assert worker["torch_version"] == torch.__version__
        assert set(worker["pretrained_cached"]) >= {"convnext_atto", "convnext_tiny"}
        assert worker["running"] == [] and worker["max_jobs"] == 1
        first_seen = worker["seen_at"]
        # The record is refreshed (every 0.2 s here), not written once.
        await wait_for(lambda: _seen_after(http, first_seen), timeout=10, what="a refreshed record")
        os.kill(tree.proc.pid, signal.SIGKILL)
        # Nothing said goodbye: the record goes when its TTL (2 s here) runs out.
        await wait_for(
            lambda: _none_listed(http), timeout=2 + 3, what="the killed worker to disappear"
        )


async def _seen_after(http: httpx.AsyncClient, seen_at: str) -> bool:
    return any(w["seen_at"] > seen_at for w in await listed(http))


async def _none_listed(http: httpx.AsyncClient) -> bool:
    return await listed(http) == []


async def test_with_no_worker_connected_a_gpu_job_is_queued_and_says_what_it_waits_for(
    http: httpx.AsyncClient,
) -> None:
    resp = await submit(http, GPU_JOB)
    assert resp.status_code == 201, resp.text
    detail = await job(http, resp.json()["id"])
    assert detail["status"] == "queued"
    assert detail["queue_position"] == 1 and detail["queue_length"] == 1
    assert "none is connected" in detail["waiting_for"]


async def test_gpu_job_on_a_cpu_only_system_is_refused_or_queued_and_never_taken(
    settings: Settings,
    http: httpx.AsyncClient,
    sync_redis: redis.Redis,
    dataset: str,
    tmp_path: Path,
) -> None:
    with worker_process(settings, tmp_path / "worker.log") as tree:
        await wait_for(lambda: listed(http), timeout=120, what=f"the worker ({tree.log})")
        refused = await submit(http, GPU_JOB)
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert body["extra"]["field"] == "config.accelerator"
        assert body["detail"].startswith("config.accelerator:")
        assert "1 worker(s) connected" in body["detail"] and "CPU only" in body["detail"]
        assert "queue_anyway" in body["detail"]

        (worker,) = await listed(http)
        if not worker["hub_reachable"] and not worker["pretrained_cached"]["convnext_atto"]:
            weights = await submit(http, {**CPU_JOB, "pretrained": True})
            assert weights.status_code == 422, weights.text
            assert weights.json()["extra"]["field"] == "config.pretrained"

        queued = await submit(http, GPU_JOB, queue_anyway="true")
        assert queued.status_code == 201, queued.text
        gpu_id = queued.json()["id"]
        warning = [e for e in events_of(sync_redis, gpu_id) if isinstance(e, QueuedUnrunnable)]
        assert len(warning) == 1 and warning[0].field == "accelerator"
        assert "no connected worker has a GPU" in warning[0].message

        # A CPU job queued behind it is taken and trained: the worker passed the GPU job over.
        cpu = await submit(http, CPU_JOB)
        assert cpu.status_code == 201, cpu.text
        cpu_id = cpu.json()["id"]
        done = await wait_for(
            lambda: _finished(http, cpu_id), timeout=180, what=f"the CPU job ({tree.log})"
        )
        assert done == "completed"

        gpu = await job(http, gpu_id)
        assert gpu["status"] == "queued"
        assert not any(isinstance(e, JobStarted | JobFailed) for e in events_of(sync_redis, gpu_id))
        task = gpu["celery_task_id"]
        assert sync_redis.zscore(keys.ARQ_QUEUE, task) is not None
        assert not sync_redis.exists(f"arq:in-progress:{task}")
        assert gpu["queue_position"] == 1
        assert "accelerator" in gpu["waiting_for"]
        assert "left in the queue" in tree.log.read_text()


async def _finished(http: httpx.AsyncClient, job_id: str) -> str | None:
    status = (await job(http, job_id))["status"]
    return status if status in ("completed", "failed", "cancelled") else None


async def _status(http: httpx.AsyncClient, job_id: str) -> str:
    return str((await job(http, job_id))["status"])


async def test_queue_positions_with_two_workers_and_five_jobs(
    settings: Settings, http: httpx.AsyncClient, dataset: str, tmp_path: Path
) -> None:
    ids = []
    for _ in range(5):
        resp = await submit(http, {**CPU_JOB, "epochs": 1000})
        assert resp.status_code == 201, resp.text
        ids.append(resp.json()["id"])
    assert [(await job(http, i))["queue_position"] for i in ids] == [1, 2, 3, 4, 5]

    with (
        worker_process(settings, tmp_path / "w1.log") as one,
        worker_process(settings, tmp_path / "w2.log") as two,
    ):
        logs = f"{one.log}, {two.log}"

        async def running() -> bool:
            return [await _status(http, i) for i in ids[:2]] == ["running"] * 2

        await wait_for(running, timeout=180, what=f"two jobs to start ({logs})")
        jobs = [await job(http, i) for i in ids]
        assert [j["status"] for j in jobs] == ["running"] * 2 + ["queued"] * 3
        assert [j["queue_position"] for j in jobs] == [None, None, 1, 2, 3]
        assert {j["queue_length"] for j in jobs[2:]} == {3}
        assert jobs[2]["waiting_for"] == "a free worker: all 2 that can run it are busy"
        assert jobs[3]["waiting_for"] == "1 job ahead of it"
        assert jobs[4]["waiting_for"] == "2 jobs ahead of it"
        workers = await listed(http)
        assert sorted(j for w in workers for j in w["running"]) == sorted(ids[:2])

        url = ws_url(str(http.base_url).rstrip("/"), ids[4])
        async with websockets.connect(url) as ws:
            assert json.loads(await ws.recv())["event"] == "connected"
            snapshot = json.loads(await ws.recv())
            assert snapshot["status"] == "queued" and snapshot["queue_position"] == 3
            cancelled = await http.post(f"{JOBS}/{ids[0]}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            # A worker takes the third job; the fifth moves up, pushed without a request.
            while True:
                message = json.loads(await wait_for_message(ws))
                if message.get("queue_position") == 2:
                    break
        await wait_for(lambda: _is_running(http, ids[2]), timeout=120, what="the third job")
        assert [(await job(http, i))["queue_position"] for i in ids[3:]] == [1, 2]
        for job_id in ids[1:]:
            await http.post(f"{JOBS}/{job_id}/cancel")


async def wait_for_message(ws: Any) -> str:
    import asyncio

    return str(await asyncio.wait_for(ws.recv(), 60))


async def _is_running(http: httpx.AsyncClient, job_id: str) -> bool:
    return await _status(http, job_id) == "running"

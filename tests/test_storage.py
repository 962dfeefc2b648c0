"""Datasets and artifacts in the blob store, against `file://` and a real S3 protocol server
(moto's, started on a free port): import → train → a worker shutdown mid-epoch → resume on a
second worker process with a different data dir → artifacts downloaded through the API →
delete leaves no object; and a worker whose data dir is empty trains from the store alone,
through its dataset cache, which refuses a recording whose bytes changed in the store."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from litestar.testing import AsyncTestClient
from support import synthetic_recordings, wait_for
from support.cli import REPO, service_env
from support.s3 import S3Server
from support.worker import burst_worker, events_of, small_config, submit

from services.worker.cache import DatasetCache
from services.worker.errors import DatasetError
from shared.datasets import Recording
from shared.events import BatchProgress, CheckpointSaved, JobCompleted, JobStarted
from shared.settings import Settings
from shared.storage import BlobStore, StorageConfig, job_key, job_prefixes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]

JOBS = "/api/v1/training/jobs"


def _env(settings: Settings, data_dir: Path) -> dict[str, str]:
    env = service_env(
        dataclasses.replace(settings, data_dir=data_dir),
        HEIMDALL_STORAGE_URL=settings.storage_url or "",
        HEIMDALL_TENSORBOARD="0",
        HEIMDALL_PROGRESS_INTERVAL_S="0.05",
        OMP_NUM_THREADS="1",
    )
    for name, value in [
        ("AWS_ACCESS_KEY_ID", settings.aws_access_key_id),
        ("AWS_SECRET_ACCESS_KEY", settings.aws_secret_access_key),
        ("AWS_REGION", settings.aws_region),
        ("AWS_ENDPOINT_URL", settings.aws_endpoint_url),
    ]:
        env.pop(name, None)
        if value:
            env[name] = value
    return env


def _heimdall(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


def _store(settings: Settings) -> BlobStore:
    return BlobStore(StorageConfig.from_settings(settings))


def _import(settings: Settings, tmp_path: Path, dataset: str) -> None:
    src = tmp_path / "recordings"
    synthetic_recordings(src, 56, seed=3)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "data",
            "import",
            str(src),
            "--dataset",
            dataset,
        ],
        cwd=REPO,
        env=_env(settings, tmp_path / "importer"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "imported 56 recordings" in done.stdout, done.stdout


async def test_import_train_resume_elsewhere_download_delete(
    stored: Settings, db: asyncpg.Connection, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    store = _store(stored)
    _import(stored, tmp_path, "rf")
    keys = store.list("datasets/rf/")
    assert len(keys) == 56
    assert not (tmp_path / "importer" / "datasets").exists()  # in the store, not the data dir
    rows = await db.fetch("SELECT path, sha256 FROM recordings WHERE dataset = 'rf'")
    assert sorted(r["path"] for r in rows) == keys and all(r["sha256"] for r in rows)

    job_id = await submit(stored, db, small_config(dataset="rf", epochs=3))
    first = _heimdall(_env(stored, tmp_path / "a"), "worker", log=tmp_path / "a.log")
    try:
        await wait_for(
            lambda: any(
                isinstance(e, BatchProgress) and e.epoch >= 2 for e in events_of(sync_redis, job_id)
            ),
            timeout=180,
            what="the second epoch on worker A",
        )
        first.send_signal(signal.SIGTERM)
        await asyncio.to_thread(first.wait, 60)
    finally:
        _stop(first)
    assert first.returncode == 0, (tmp_path / "a.log").read_text()
    assert store.exists(job_key(job_id, "resume.pt"))

    second = _heimdall(_env(stored, tmp_path / "b"), "worker", "--burst", log=tmp_path / "b.log")
    try:
        await wait_for(
            lambda: second.poll() is not None, timeout=240, what="worker B to drain the queue"
        )
    finally:
        _stop(second)
    events = events_of(sync_redis, job_id)
    assert isinstance(events[-1], JobCompleted), (tmp_path / "b.log").read_text()[-3000:]
    starts = [e for e in events if isinstance(e, JobStarted)]
    assert [s.start_epoch for s in starts] == [1, 2], "B resumed A's epoch from the store"
    assert starts[0].worker != starts[1].worker
    objects = {k.rsplit("/", 1)[-1] for k in store.list(job_key(job_id))}
    assert {"best.pt", "last.pt", "model.onnx"} <= objects and "resume.pt" not in objects
    if not store.is_local:  # worker B read A's checkpoint and the recordings from S3 alone
        assert (tmp_path / "b" / "cache" / "datasets" / "rf").is_dir()

    from services.api.app import create_app

    api_settings = dataclasses.replace(stored, data_dir=tmp_path / "api")
    async with AsyncTestClient(app=create_app(api_settings)) as client:
        for kind, name in (("onnx", "model.onnx"), ("checkpoint", "best.pt")):
            got = await wait_for(
                lambda kind=kind: _ok(client.get(f"{JOBS}/{job_id}/artifacts/{kind}")),
                timeout=30,
                what=f"the {kind} download",
            )
            assert got.content == store.get_bytes(job_key(job_id, name))
            assert got.headers["content-length"] == str(len(got.content))
        assert (await client.delete(f"{JOBS}/{job_id}")).status_code == 204
    assert [key for prefix in job_prefixes(job_id) for key in store.list(prefix)] == []


async def _ok(request: Any) -> Any:
    response = await request
    return response if response.status_code == 200 else None


async def test_an_empty_worker_trains_from_object_storage_and_checks_hashes(
    s3: S3Server,
    settings: Settings,
    db: asyncpg.Connection,
    sync_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    remote = s3.settings(settings)
    _import(remote, tmp_path, "rf")
    # The in-process worker shares this test's loop with the staging threads' completions; on
    # a crowded machine Redis replies may wait longer than the 3 s default.
    empty = dataclasses.replace(remote, data_dir=tmp_path / "empty", redis_timeout_s=15.0)
    job_id = await submit(empty, db, small_config(dataset="rf", epochs=1))
    async with burst_worker(empty):
        pass
    events = events_of(sync_redis, job_id)
    assert isinstance(events[-1], JobCompleted), events[-1]
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert saved and all(_store(remote).exists(job_key(job_id, Path(e.path).name)) for e in saved)
    cached = sorted((tmp_path / "empty" / "cache" / "datasets" / "rf").rglob("*.wav"))
    assert len(cached) == 56

    # A recording whose object changed after its import is refused, not trained on.
    key = await db.fetchval("SELECT path FROM recordings WHERE dataset='rf' LIMIT 1")
    _store(remote).put_bytes(key, _store(remote).get_bytes(key)[:-2] + b"\0\1")
    rows = await db.fetch(
        "SELECT id::text, path, label, snr_db, approved, sample_rate, duration_s, channels,"
        " sha256 FROM recordings WHERE dataset='rf'"
    )
    recordings = [Recording(**dict(r)) for r in rows]
    other = DatasetCache(_store(remote), tmp_path / "other", 1 << 30)
    with pytest.raises(DatasetError, match="does not match its import"):
        other.prepare("rf", recordings)
    assert not (tmp_path / "other" / key).exists()  # the bad copy is not kept

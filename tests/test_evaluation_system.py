"""Evaluation and prediction through the whole system: a real job trained by a worker process,
its events stored by the recorder, read back through the API, and the job's ONNX model used by
POST .../predict and `heimdall predict`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import numpy as np
import onnxruntime as ort
import pytest
from litestar.testing import AsyncTestClient
from support import TINY, running_system, serve_api, wait_for
from support.cli import REPO, run_heimdall

from services.api.predict_input import ModelInput, read_uploads
from shared.datasets import write_synthetic
from shared.emit import AsyncEmitter
from shared.events import EvaluationCompleted, decode_event
from shared.redis_clients import arq_client
from shared.settings import Settings
from shared.storage import open_store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]

JOBS = "/api/v1/training/jobs"
CONFIG = {**TINY, "dataset": "ev", "seed": 4, "epochs": 2, "test_split": 0.2}


@pytest.fixture
async def system(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    await write_synthetic(db, open_store(settings), "ev", 70, seed=2, duration_s=0.25)
    async with running_system(settings) as client:
        yield client


async def _finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        job = (await client.get(f"{JOBS}/{job_id}")).json()["job"]
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    job: dict[str, Any] = await wait_for(done, timeout=300, what="the job to finish")
    assert job["status"] == "completed", job["error_message"]
    return job


def _check_split(split: dict[str, Any], classes: list[str], size: int) -> None:
    matrix = split["confusion_matrix"]
    assert len(matrix) == len(classes) and all(len(row) == len(classes) for row in matrix)
    assert sum(map(sum, matrix)) == size == split["samples"]
    assert split["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(len(classes))) / size)
    for i, name in enumerate(classes):
        m = split["per_class"][name]
        assert m["support"] == sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        assert m["precision"] == pytest.approx(matrix[i][i] / predicted if predicted else 0.0)
    assert sum(b["support"] for b in split["accuracy_by_snr"]) <= size


async def _wav_files(db: asyncpg.Connection, settings: Settings, count: int) -> list[Path]:
    """Files of recordings of the dataset: the rows hold store keys (a file:// store here)."""
    rows = await db.fetch(
        "SELECT path FROM recordings WHERE dataset = 'ev' ORDER BY label, id LIMIT $1", count
    )
    store = open_store(settings)
    return [store.local_path(r["path"]) or Path(r["path"]) for r in rows]


async def test_evaluation_test_rows_and_predictions(
    system: httpx.AsyncClient, settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    job_id = (await system.post(JOBS, json={"job_name": "ev", "config": CONFIG})).json()["id"]
    job = await _finished(system, job_id)
    assert job["dataset_size"] == job["train_samples"] + job["val_samples"] + job["test_samples"]
    assert job["test_samples"] == 14 and job["monitor"] == "val_loss"
    assert job["best_value"] == pytest.approx(job["best_val_loss"])

    body = (await system.get(f"{JOBS}/{job_id}/evaluation")).json()
    classes = body["classes"]
    assert len(classes) == 7 and body["val_epochs"] == [1, 2]
    val, test = body["splits"]["val"], body["splits"]["test"]
    assert val["epoch"] == 2 and test["epoch"] == job["best_epoch"]
    _check_split(val, classes, job["val_samples"])
    _check_split(test, classes, job["test_samples"])
    first = (await system.get(f"{JOBS}/{job_id}/evaluation", params={"epoch": 1})).json()
    assert first["splits"]["val"]["epoch"] == 1
    for bad in ("0", "x", "3"):
        resp = await system.get(f"{JOBS}/{job_id}/evaluation", params={"epoch": bad})
        assert resp.status_code == 400 and "epoch" in resp.text, (bad, resp.text)
    unknown = await system.get(f"{JOBS}/00000000-0000-4000-8000-000000000000/evaluation")
    assert unknown.status_code == 404

    rows = (await system.get(f"{JOBS}/{job_id}/metrics", params={"phase": "test"})).json()
    assert [(m["epoch"], m["phase"]) for m in rows["metrics"]] == [(test["epoch"], "test")]
    assert rows["metrics"][0]["val_accuracy"] == pytest.approx(test["accuracy"])

    # A worker that re-ran the job's end after a crash would emit the test evaluation again:
    # the recorder stores the event and keeps the first result only.
    stored = await db.fetch(
        "SELECT payload FROM training_events WHERE training_job_id = $1"
        " AND type = 'evaluation_completed' AND payload->>'phase' = 'test'",
        job_id,
    )
    original = decode_event(json.dumps(stored[0]["payload"]))
    assert isinstance(original, EvaluationCompleted)
    redis = arq_client(settings.redis_url or "", 3.0, "q")
    try:
        repeat = msgspec.structs.replace(original, ts=original.ts + 1, macro_f1=-1.0)
        await AsyncEmitter(redis).emit(repeat)
    finally:
        await redis.aclose()

    async def stored_twice() -> bool:
        n = await db.fetchval(
            "SELECT count(*) FROM training_events WHERE training_job_id = $1"
            " AND type = 'evaluation_completed' AND payload->>'phase' = 'test'",
            job_id,
        )
        return bool(n == 2)

    await wait_for(stored_twice, timeout=30, what="the repeated evaluation to be stored")
    again = (await system.get(f"{JOBS}/{job_id}/evaluation")).json()["splits"]["test"]
    assert again["macro_f1"] == test["macro_f1"] >= 0
    rows = (await system.get(f"{JOBS}/{job_id}/metrics", params={"phase": "test"})).json()
    assert len(rows["metrics"]) == 1

    # Predictions: probabilities sum to 1 and agree with onnxruntime run directly.
    wavs = await _wav_files(db, settings, 3)
    files = [("files", (p.name, p.read_bytes(), "audio/wav")) for p in wavs]
    resp = await system.post(f"{JOBS}/{job_id}/predict", files=files)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["classes"] == classes and out["epoch"] == job["best_epoch"]
    assert [p["file"] for p in out["predictions"]] == [p.name for p in wavs]
    session = ort.InferenceSession(str(settings.artifacts_dir / job_id / "model.onnx"))
    spec = ModelInput.of(dict(session.get_modelmeta().custom_metadata_map))
    _, batch = read_uploads([(p.name, p.read_bytes()) for p in wavs], spec)
    logits = session.run(["logits"], {"waveform": batch})[0]
    want = np.exp(logits - logits.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    for pred, row in zip(out["predictions"], want, strict=True):
        probs = [pred["probabilities"][c] for c in classes]
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert probs == pytest.approx(row.tolist(), abs=1e-5)
        assert pred["label"] == classes[int(np.argmax(row))]

    not_audio = [("files", ("notes.txt", b"hello", "text/plain"))]
    resp = await system.post(f"{JOBS}/{job_id}/predict", files=not_audio)
    assert resp.status_code == 400 and "notes.txt" in resp.json()["detail"]
    fake_wav = [("files", ("fake.wav", b"RIFF....not a wav", "audio/wav"))]
    resp = await system.post(f"{JOBS}/{job_id}/predict", files=fake_wav)
    assert resp.status_code == 400 and "fake.wav" in resp.json()["detail"]

    # A job without a model yet: 409.
    queued = (await system.post(JOBS, json={"job_name": "q", "config": CONFIG})).json()["id"]
    resp = await system.post(f"{JOBS}/{queued}/predict", files=files[:1])
    assert resp.status_code == 409, resp.text
    await system.post(f"{JOBS}/{queued}/cancel")

    # The CLI, against the API on a real port.
    async with serve_api(settings) as base:
        printed = await asyncio.to_thread(
            run_heimdall, settings, "predict", job_id, *map(str, wavs[:2]), "--url", base
        )
        as_json = await asyncio.to_thread(
            run_heimdall, settings, "predict", job_id, str(wavs[0]), "--json", "--url", base
        )
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, pred in zip(lines, out["predictions"][:2], strict=True):
        name, label, p = line.split("\t")
        assert (name, label) == (pred["file"], pred["label"])
        assert float(p) == pytest.approx(pred["probabilities"][label], abs=1e-4)
    assert json.loads(as_json.stdout)["predictions"][0]["label"] == out["predictions"][0]["label"]


def test_the_api_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from services.api.app import create_app\n"
        "from services.api import predict, predict_input, evaluation\n"
        "from shared.settings import Settings\n"
        "create_app(Settings())\n"
        "sys.exit(1 if 'torch' in sys.modules else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr or "torch was imported"


async def test_predict_body_limit_and_an_unknown_job(settings: Settings) -> None:
    from dataclasses import replace

    from services.api.app import create_app

    app = create_app(replace(settings, max_predict_bytes=4096))
    url = f"{JOBS}/00000000-0000-4000-8000-000000000000/predict"
    async with AsyncTestClient(app=app) as client:
        big = [("files", ("big.wav", b"\0" * 8192, "audio/wav"))]
        assert (await client.post(url, files=big)).status_code == 413
        small = [("files", ("small.wav", b"\0" * 100, "audio/wav"))]
        assert (await client.post(url, files=small)).status_code == 404
        # No file part at all: 400 naming `files`, never a 500.
        resp = await client.post(url, files=[("other", ("x.wav", b"x", "audio/wav"))])
        assert resp.status_code == 400 and "files" in resp.text, resp.text
        resp = await client.post(url, json={"files": []})
        assert resp.status_code == 415, resp.text

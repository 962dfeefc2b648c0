"""REST round trips against real Valkey and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aredis
from litestar.testing import AsyncTestClient

from services.api.app import create_app
from shared import keys
from shared.commands import decode_command
from shared.datasets import write_synthetic
from shared.emit import AsyncEmitter
from shared.events import EpochCompleted, JobStarted
from shared.jobs import utcnow
from shared.settings import Settings
from shared.storage import open_store

JOBS = "/api/v1/training/jobs"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as c:
        yield c


async def _create(client: AsyncTestClient[Any], **config: Any) -> dict[str, Any]:
    resp = await client.post(JOBS, json={"job_name": "t", "config": config})
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def _commands(redis_client: aredis.Redis) -> list[Any]:
    entries = await redis_client.xrange(keys.COMMANDS_STREAM)
    return [decode_command(fields[b"data"]) for _, fields in entries]


async def test_create_returns_seed_body_and_get_finds_it(
    client: AsyncTestClient[Any], redis_client: aredis.Redis
) -> None:
    resp = await client.post(
        JOBS,
        json={
            "job_name": "My Training Job",
            "config": {
                "epochs": 100,
                "batch_size": 32,
                "learning_rate": 0.001,
                "model_architecture": "convnext_large",
            },
        },
    )
    assert resp.status_code == 201
    body = resp.json()
    assert set(body) == {
        "id",
        "job_name",
        "status",
        "created_at",
        "celery_task_id",
        "config",
        "total_epochs",
    }
    assert body["status"] == "queued" and body["total_epochs"] == 100
    assert body["config"]["model_architecture"] == "convnext_large"
    assert body["config"]["n_mels"] == 128  # defaults filled in
    assert body["created_at"].endswith("Z")

    got = await client.get(f"{JOBS}/{body['id']}")
    assert got.status_code == 200
    detail = got.json()
    assert detail["job"]["status"] == "queued"
    assert detail["recent_metrics"] == []
    assert detail["websocket_url"] == f"ws://testserver.local/ws/training/{body['id']}"

    # The job is queued for exactly one arq worker (commands are only for running jobs).
    assert await _commands(redis_client) == []
    queued = await redis_client.zrange(keys.ARQ_QUEUE, 0, -1)
    assert queued == [body["celery_task_id"].encode()]


async def test_websocket_url_follows_request_host(client: AsyncTestClient[Any]) -> None:
    job = await _create(client)
    got = await client.get(f"{JOBS}/{job['id']}", headers={"host": "example.org:9000"})
    assert got.json()["websocket_url"] == f"ws://example.org:9000/ws/training/{job['id']}"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"job_name": "x", "config": {"bogus": 1}}, "bogus"),
        ({"job_name": "x", "config": {"epochs": 0}}, "config.epochs"),
        ({"job_name": "x", "config": {"epochs": 1001}}, "config.epochs"),
        ({"job_name": "x", "config": {"epochs": "ten"}}, "config.epochs"),
        ({"job_name": "x", "config": {"epochs": 2.5}}, "config.epochs"),
        ({"job_name": "x", "config": {"batch_size": 0}}, "config.batch_size"),
        ({"job_name": "x", "config": {"batch_size": 513}}, "config.batch_size"),
        ({"job_name": "x", "config": {"num_workers": -1}}, "config.num_workers"),
        ({"job_name": "x", "config": {"num_workers": 17}}, "config.num_workers"),
        ({"job_name": "x", "config": {"validation_split": 0.6}}, "config.validation_split"),
        ({"job_name": "x", "config": {"validation_split": -0.1}}, "config.validation_split"),
        ({"job_name": "x", "config": {"dropout_rate": 0.95}}, "config.dropout_rate"),
        ({"job_name": "x", "config": {"learning_rate": 0}}, "config.learning_rate"),
        ({"job_name": "x", "config": {"weight_decay": -1}}, "config.weight_decay"),
        ({"job_name": "x", "config": {"n_mels": 4}}, "config.n_mels"),
        ({"job_name": "x", "config": {"n_fft": 8}}, "config.n_fft"),
        ({"job_name": "x", "config": {"hop_length": 0}}, "config.hop_length"),
        ({"job_name": "x", "config": {"warmup_epochs": -1}}, "config.warmup_epochs"),
        ({"job_name": "x", "config": {"early_stop_patience": 0}}, "config.early_stop_patience"),
        ({"job_name": "x", "config": {"devices": 0}}, "config.devices"),
        (
            {"job_name": "x", "config": {"model_architecture": "resnet50"}},
            "config.model_architecture",
        ),
        ({"job_name": "x", "config": {"lr_scheduler": "linear"}}, "config.lr_scheduler"),
        ({"job_name": "x", "config": {"accelerator": "tpu"}}, "config.accelerator"),
        ({"job_name": "x", "config": {"pretrained": "yes"}}, "config.pretrained"),
        ({"job_name": "x", "config": {"freeze_backbone": 1}}, "config.freeze_backbone"),
        ({"job_name": "x", "config": {"only_approved": None}}, "config.only_approved"),
        ({"job_name": "x", "config": {"min_snr_db": "high"}}, "config.min_snr_db"),
        ({"job_name": "x", "config": {"dataset": "../etc"}}, "config.dataset"),
        ({"job_name": "x", "config": {"seed": -1}}, "config.seed"),
        ({"job_name": "x", "config": {"n_fft": 256, "hop_length": 512}}, "config.hop_length"),
        (
            {"job_name": "x", "config": {"n_fft": 64, "hop_length": 16, "n_mels": 64}},
            "config.n_mels",
        ),
        ({"job_name": "x", "config": []}, "config"),
        ({"job_name": "", "config": {}}, "job_name"),
        ({"job_name": "x" * 256}, "job_name"),
        ({"config": {}}, "job_name"),
        ({"job_name": 5}, "job_name"),
        ({"job_name": "x", "extra": 1}, "extra"),
    ],
)
async def test_validation_rejects_with_400_naming_the_field(
    client: AsyncTestClient[Any], redis_client: aredis.Redis, body: dict[str, Any], field: str
) -> None:
    resp = await client.post(JOBS, json=body)
    assert resp.status_code == 400, resp.text
    assert field in resp.json()["detail"], resp.json()
    # Nothing was created or queued.
    assert (await client.get(JOBS)).json()["total"] == 0
    assert await redis_client.xlen(keys.COMMANDS_STREAM) == 0


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b"null", b'"x"', b""])
async def test_malformed_bodies_are_400(client: AsyncTestClient[Any], raw: bytes) -> None:
    resp = await client.post(JOBS, content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text


async def test_list_filters_paginates_newest_first(
    client: AsyncTestClient[Any], settings: Settings, db: asyncpg.Connection
) -> None:
    ids = [(await _create(client, epochs=i + 1))["id"] for i in range(5)]
    # Spread creation times so "newest first" is unambiguous.
    for i, job_id in enumerate(ids):
        await db.execute(
            "UPDATE training_jobs SET created_at = $2 WHERE id = $1",
            uuid.UUID(job_id),
            utcnow() - timedelta(minutes=10 - i),
        )
    await db.execute("UPDATE training_jobs SET status='running' WHERE id=$1", uuid.UUID(ids[1]))

    page = (await client.get(JOBS, params={"limit": 2, "offset": 1})).json()
    assert page["total"] == 5
    assert [j["id"] for j in page["jobs"]] == [ids[3], ids[2]]
    running = (await client.get(JOBS, params={"status": "running"})).json()
    assert running["total"] == 1 and running["jobs"][0]["id"] == ids[1]
    assert set(running["jobs"][0]) >= {
        "id",
        "job_name",
        "status",
        "current_epoch",
        "total_epochs",
        "progress_percent",
        "train_loss",
        "val_loss",
    }


@pytest.mark.parametrize(
    "params", [{"status": "sleeping"}, {"limit": 0}, {"limit": "x"}, {"offset": -1}]
)
async def test_list_rejects_bad_query(client: AsyncTestClient[Any], params: dict[str, Any]) -> None:
    resp = await client.get(JOBS, params=params)
    assert resp.status_code == 400
    assert next(iter(params)) in resp.json()["detail"]


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", "1" * 300])
async def test_unknown_job_is_404_everywhere(client: AsyncTestClient[Any], job_id: str) -> None:
    for method, path in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/cancel"),
        ("GET", "/metrics"),
        ("GET", "/events"),
        ("GET", "/artifacts/onnx"),
    ]:
        resp = await client.request(method, f"{JOBS}/{job_id}{path}")
        assert resp.status_code == 404, (method, path, resp.text)
        assert job_id in resp.json()["detail"]


async def test_cancel_queued_job(client: AsyncTestClient[Any], redis_client: aredis.Redis) -> None:
    job = await _create(client)
    resp = await client.post(f"{JOBS}/{job['id']}/cancel")
    assert resp.status_code == 200
    assert resp.json()["job"]["status"] == "cancelled"
    assert (await client.get(f"{JOBS}/{job['id']}")).json()["job"]["status"] == "cancelled"
    assert [type(c).__name__ for c in await _commands(redis_client)] == ["CancelJob"]
    assert await redis_client.exists(keys.cancel_flag(job["id"]))
    again = await client.post(f"{JOBS}/{job['id']}/cancel")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]


async def test_delete_removes_every_trace(
    client: AsyncTestClient[Any],
    settings: Settings,
    redis_client: aredis.Redis,
    db: asyncpg.Connection,
) -> None:
    job = await _create(client)
    job_dir = settings.artifacts_dir / job["id"]
    job_dir.mkdir(parents=True)
    (job_dir / "best.pt").write_bytes(b"x")
    await AsyncEmitter(redis_client).emit(JobStarted(job_id=job["id"]))
    await db.execute(
        "INSERT INTO training_metrics (timestamp, id, training_job_id, epoch, phase)"
        " VALUES ($1, $2, $3, 1, 'epoch')",
        utcnow(),
        uuid.uuid4(),
        uuid.UUID(job["id"]),
    )
    assert (await client.delete(f"{JOBS}/{job['id']}")).status_code == 204
    assert (await client.get(f"{JOBS}/{job['id']}")).status_code == 404
    assert await db.fetchval("SELECT count(*) FROM training_metrics") == 0
    assert not job_dir.exists()
    assert not await redis_client.exists(keys.job_stream(job["id"]))
    assert type((await _commands(redis_client))[-1]).__name__ == "DeleteJob"
    assert (await client.delete(f"{JOBS}/{job['id']}")).status_code == 404


async def _epoch_rows(db: asyncpg.Connection, job_id: str, epochs: int) -> None:
    base = utcnow()
    await db.copy_records_to_table(
        "training_metrics",
        columns=["timestamp", "id", "training_job_id", "epoch", "phase", "train_loss"],
        records=[
            (base + timedelta(seconds=e), uuid.uuid4(), uuid.UUID(job_id), e, "epoch", 1.0 / e)
            for e in range(1, epochs + 1)
        ],
    )


async def test_metrics_returns_most_recent_epochs_in_order(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    job = await _create(client, epochs=300)
    await _epoch_rows(db, job["id"], 300)
    body = (await client.get(f"{JOBS}/{job['id']}/metrics", params={"limit": 100})).json()
    assert [m["epoch"] for m in body["metrics"]] == list(range(201, 301))
    assert body["metrics"][0]["train_loss"] == pytest.approx(1 / 201)
    assert body["metrics"][0]["timestamp"].endswith("Z")
    recent = (await client.get(f"{JOBS}/{job['id']}")).json()["recent_metrics"]
    assert [m["epoch"] for m in recent] == list(range(291, 301))


async def test_metrics_follow_new_rows_after_the_cache(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    job = await _create(client, epochs=5)
    await _epoch_rows(db, job["id"], 3)
    await db.execute(
        "UPDATE training_jobs SET last_event_id='1-1' WHERE id=$1", uuid.UUID(job["id"])
    )
    url = f"{JOBS}/{job['id']}/metrics"
    assert [m["epoch"] for m in (await client.get(url)).json()["metrics"]] == [1, 2, 3]
    assert [m["epoch"] for m in (await client.get(url)).json()["metrics"]] == [1, 2, 3]
    # The recorder commits new rows and a newer last_event_id together.
    async with db.transaction():
        await db.execute(
            "INSERT INTO training_metrics (timestamp, id, training_job_id, epoch, phase)"
            " VALUES ($1, $2, $3, 4, 'epoch')",
            utcnow() + timedelta(minutes=1),
            uuid.uuid4(),
            uuid.UUID(job["id"]),
        )
        await db.execute(
            "UPDATE training_jobs SET last_event_id='2-1' WHERE id=$1", uuid.UUID(job["id"])
        )
    assert [m["epoch"] for m in (await client.get(url)).json()["metrics"]] == [1, 2, 3, 4]


async def test_metrics_downsamples_batch_series(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    job = await _create(client)
    base = utcnow()
    await db.copy_records_to_table(
        "training_metrics",
        columns=["timestamp", "id", "training_job_id", "epoch", "batch", "phase", "train_loss"],
        records=[
            (
                base + timedelta(milliseconds=i),
                uuid.uuid4(),
                uuid.UUID(job["id"]),
                i // 100 + 1,
                i % 100 + 1,
                "train",
                float(i),
            )
            for i in range(5000)
        ],
    )
    full = (await client.get(f"{JOBS}/{job['id']}/metrics", params={"phase": "train"})).json()
    assert len(full["metrics"]) == 5000
    assert [m["train_loss"] for m in full["metrics"][:3]] == [0.0, 1.0, 2.0]
    small = (
        await client.get(f"{JOBS}/{job['id']}/metrics", params={"phase": "train", "points": 50})
    ).json()["metrics"]
    assert len(small) == 50
    assert small[0]["train_loss"] == pytest.approx(49.5)  # mean of the first 100 points
    assert small[-1]["epoch"] == 50 and small[-1]["batch"] == 100
    columns = (
        await client.get(
            f"{JOBS}/{job['id']}/metrics",
            params={"phase": "train", "points": 50, "format": "columns"},
        )
    ).json()["metrics"]
    assert columns["train_loss"] == [m["train_loss"] for m in small]
    assert columns["batch"] == [m["batch"] for m in small]
    assert columns["timestamp"] == [m["timestamp"] for m in small]
    bad = await client.get(f"{JOBS}/{job['id']}/metrics", params={"phase": "nope"})
    assert bad.status_code == 400


async def test_events_endpoint_pages_in_order(
    client: AsyncTestClient[Any], redis_client: aredis.Redis
) -> None:
    job = await _create(client, epochs=5)
    emitter = AsyncEmitter(redis_client)
    for epoch in range(1, 6):
        await emitter.emit(
            EpochCompleted(
                job_id=job["id"],
                epoch=epoch,
                total_epochs=5,
                train_loss=1.0,
                val_loss=1.0,
                train_accuracy=0.5,
                val_accuracy=0.5,
                learning_rate=0.1,
            )
        )
    body = (await client.get(f"{JOBS}/{job['id']}/events")).json()
    types = [e["event"]["type"] for e in body["events"]]
    assert types == ["job_queued"] + ["epoch_completed"] * 5
    ids = [e["event_id"] for e in body["events"]]
    second = (
        await client.get(f"{JOBS}/{job['id']}/events", params={"after": ids[2], "limit": 2})
    ).json()
    assert [e["event_id"] for e in second["events"]] == ids[3:5]
    bad = await client.get(f"{JOBS}/{job['id']}/events", params={"after": "yesterday"})
    assert bad.status_code == 400


async def test_artifact_download_stays_inside_job_dir(
    client: AsyncTestClient[Any], settings: Settings, db: asyncpg.Connection
) -> None:
    job = await _create(client)
    job_dir = settings.artifacts_dir / job["id"]
    job_dir.mkdir(parents=True)
    (job_dir / "model.onnx").write_bytes(b"onnx-bytes")
    await db.execute(
        "UPDATE training_jobs SET onnx_model_path=$2, checkpoint_path=$3 WHERE id=$1",
        uuid.UUID(job["id"]),
        str(job_dir / "model.onnx"),
        str(job_dir / "../../../etc/passwd"),
    )
    ok = await client.get(f"{JOBS}/{job['id']}/artifacts/onnx")
    assert ok.status_code == 200 and ok.content == b"onnx-bytes"
    assert (await client.get(f"{JOBS}/{job['id']}/artifacts/checkpoint")).status_code == 404
    assert (await client.get(f"{JOBS}/{job['id']}/artifacts/weights")).status_code == 404


async def test_datasets_summary(
    client: AsyncTestClient[Any], settings: Settings, db: asyncpg.Connection
) -> None:
    await write_synthetic(db, open_store(settings), "rf", 28, seed=1, duration_s=0.1)
    listing = (await client.get("/api/v1/datasets")).json()
    assert [d["name"] for d in listing["datasets"]] == ["rf"]
    one = (await client.get("/api/v1/datasets/rf")).json()
    assert one["recordings"] == 28 and sum(one["classes"].values()) == 28
    assert len(one["classes"]) == 7
    assert 0 < one["approved"] <= 28
    assert one["snr_db_min"] < one["snr_db_max"]
    assert (await client.get("/api/v1/datasets/none")).status_code == 404


async def test_health_ready_openapi(client: AsyncTestClient[Any]) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/api/v1/training/jobs" in schema["paths"]


async def test_token_auth(settings: Settings) -> None:
    secured = replace(settings, api_token="s3cret")
    async with AsyncTestClient(app=create_app(secured)) as c:
        assert (await c.get(JOBS)).status_code == 401
        assert (await c.get(JOBS, headers={"authorization": "Bearer wrong"})).status_code == 401
        assert (await c.get(JOBS, headers={"authorization": "Bearer s3cret"})).status_code == 200
        assert (await c.get("/health")).status_code == 200
    assert "s3cret" not in repr(secured)

"""The read-optimised metric series: equal to the rows after every way rows get written, and
the metrics endpoint gives the same answers from it as from the rows."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aredis
from litestar.testing import AsyncTestClient
from support import wait_for
from support.recorder import FAST, drained, recorder
from support.series import (
    as_comparable,
    assert_series_match_rows,
    chunks_of,
    iso,
    reference_downsample,
    rows_of,
)

from services.api.app import create_app
from services.api.metrics import rows_query
from services.recorder.app import prepare
from services.recorder.store import Store
from shared import keys
from shared.config import TrainingConfig
from shared.emit import AsyncEmitter
from shared.events import BatchPoint, BatchProgress, EpochCompleted, JobStarted
from shared.jobs import insert_job, utcnow
from shared.metric_series import BLOCK_POINTS, BLOCKS_FROM, CHUNK_BATCHES
from shared.settings import Settings

JOBS = "/api/v1/training/jobs"


async def new_job(db: asyncpg.Connection) -> str:
    return str((await insert_job(db, "series", TrainingConfig(epochs=50)))["id"])


def progress(job: str, epoch: int, first: int, count: int, ts: float) -> BatchProgress:
    points = [
        BatchPoint(epoch, b, 1.0 / b + epoch, 0.5 + b * 1e-4, 1e-3, None if b % 7 else 0.3, ts + b)
        for b in range(first, first + count)
    ]
    return BatchProgress(
        job_id=job, epoch=epoch, batch=first + count - 1, total_batches=100, points=points
    )


def epoch_done(job: str, epoch: int) -> EpochCompleted:
    return EpochCompleted(
        job_id=job, epoch=epoch, total_epochs=50, train_loss=1.0 / epoch, val_loss=2.0 / epoch,
        train_accuracy=0.5, val_accuracy=0.4, learning_rate=1e-3, epoch_time_s=1.5 + epoch,
    )  # fmt: skip


async def emit_epochs(
    emitter: AsyncEmitter, job: str, epochs: range, batches: int, step: int, ts: float
) -> None:
    for epoch in epochs:
        for first in range(1, batches + 1, step):
            count = min(step, batches - first + 1)
            await emitter.emit(progress(job, epoch, first, count, ts + epoch * 1000))
        await emitter.emit(epoch_done(job, epoch))


async def test_series_equal_rows_after_runs_resumes_and_redelivery(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    emitter = AsyncEmitter(redis_client)
    a, b = await new_job(db), await new_job(db)
    # Batch numbers past CHUNK_BATCHES: an epoch spread over two chunks.
    big = CHUNK_BATCHES + 40
    async with recorder(settings):
        for job in (a, b):
            await emitter.emit(JobStarted(job_id=job, total_batches=big))
        await emit_epochs(emitter, a, range(1, 4), big, 16, 1.7e9)
        await emit_epochs(emitter, b, range(1, 3), 30, 7, 1.7e9)
        # A resumed job re-runs epoch 2 of `b` from batch 1 (same epoch and batch numbers,
        # later timestamps) and an older batch of `a` arrives late: both merge into place.
        await emit_epochs(emitter, b, range(2, 4), 30, 5, 1.8e9)
        await emitter.emit(progress(a, 2, 3, 2, 1.6e9))
        await wait_for(lambda: drained(redis_client), timeout=30, what="recorded")
    assert await assert_series_match_rows(db) == 4
    rows = await rows_of(db, uuid.UUID(b), "train")
    assert len(rows) == 30 + 30 + 30 + 30  # epoch 2 twice, epoch 3 once

    # A redelivered batch (a dead consumer's entries, claimed again) changes nothing.
    before = {
        job: await chunks_of(db, uuid.UUID(job), phase)
        for job in (a, b)
        for phase in ("train", "epoch")
    }
    entries = await redis_client.xrange(keys.EVENTS_STREAM)
    assert settings.database_url
    store = Store(settings.database_url, FAST)
    try:
        _, batch = await prepare(entries)
        result = await store.write(await store.connection(), batch)
    finally:
        await store.close()
    assert (result.events, result.metrics) == (0, 0)
    after = {
        job: await chunks_of(db, uuid.UUID(job), phase)
        for job in (a, b)
        for phase in ("train", "epoch")
    }
    assert after == before


async def test_series_survive_recorder_restarts_and_deletes(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    emitter = AsyncEmitter(redis_client)
    kept, deleted = await new_job(db), await new_job(db)
    await emit_epochs(emitter, kept, range(1, 3), 50, 10, 1.7e9)
    async with recorder(settings):
        await wait_for(lambda: drained(redis_client), timeout=30, what="first part recorded")
    await emit_epochs(emitter, kept, range(3, 5), 50, 10, 1.7e9)
    await emit_epochs(emitter, deleted, range(1, 3), 50, 10, 1.7e9)
    async with recorder(settings):
        await wait_for(lambda: drained(redis_client), timeout=30, what="second part recorded")
        await db.execute("DELETE FROM training_jobs WHERE id = $1", uuid.UUID(deleted))
        await emit_epochs(emitter, kept, range(5, 6), 50, 10, 1.7e9)
        await emit_epochs(emitter, deleted, range(3, 4), 50, 10, 1.7e9)
        await wait_for(lambda: drained(redis_client), timeout=30, what="the rest recorded")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM metric_chunks WHERE training_job_id = $1", uuid.UUID(deleted)
        )
        == 0
    )
    assert await assert_series_match_rows(db) == 2
    assert len(await rows_of(db, uuid.UUID(kept), "train")) == 5 * 50


async def test_rows_written_elsewhere_are_folded_in(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    """A series with rows but no chunks (rows from before the chunks existed) is rebuilt from
    its rows when the recorder first writes to it."""
    job = await new_job(db)
    base = utcnow() - timedelta(hours=1)
    await db.copy_records_to_table(
        "training_metrics",
        columns=["timestamp", "id", "training_job_id", "epoch", "batch", "phase", "train_loss"],
        records=[
            (base + timedelta(seconds=i), uuid.uuid4(), uuid.UUID(job), 1, i + 1, "train", 0.1 * i)
            for i in range(20)
        ],
    )
    async with recorder(settings):
        await AsyncEmitter(redis_client).emit(progress(job, 2, 1, 5, 1.7e9))
        await wait_for(lambda: drained(redis_client), timeout=30, what="recorded")
    assert await assert_series_match_rows(db) == 1
    assert len(await chunks_of(db, uuid.UUID(job), "train")) == 25


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as c:
        yield c


async def _from_rows(db: asyncpg.Connection, job: str, params: dict[str, Any]) -> Any:
    """What the endpoint answers from the rows (the path for series without chunks)."""
    phase = params.get("phase", "epoch")
    limit = params.get("limit", 100 if phase == "epoch" else None)
    query, args = rows_query(
        uuid.UUID(job), phase, limit, params.get("points"), params.get("format") == "columns"
    )
    return json.loads(await db.fetchval(query, *args))


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9)
    return bool(a == b)


async def test_endpoint_from_chunks_equals_rows_and_reference(
    settings: Settings,
    db: asyncpg.Connection,
    redis_client: aredis.Redis,
    client: AsyncTestClient[Any],
) -> None:
    emitter = AsyncEmitter(redis_client)
    job = await new_job(db)
    async with recorder(settings):
        await emit_epochs(emitter, job, range(1, 13), 250, 25, 1.7e9)
        await emit_epochs(emitter, job, range(12, 13), 250, 50, 1.8e9)  # a resumed epoch
        await wait_for(lambda: drained(redis_client), timeout=60, what="recorded")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM metric_chunks WHERE training_job_id = $1", uuid.UUID(job)
        )
        == 12 + 12  # one chunk per epoch and phase: the resumed epoch merges into its own
    )
    rows = await rows_of(db, uuid.UUID(job), "train")
    n = len(rows)
    assert n == 13 * 250
    cases: list[dict[str, Any]] = [
        {},
        {"limit": 5},
        {"phase": "train"},
        {"phase": "train", "format": "columns"},
        {"phase": "train", "limit": 777},
        {"phase": "train", "limit": 777, "points": 50, "format": "columns"},
        {"phase": "train", "points": 1000},
        {"phase": "train", "points": 7},  # n / 7 >= BLOCKS_FROM: from the blocks
    ]
    assert n // 7 >= BLOCKS_FROM and n // 1000 < BLOCKS_FROM
    for params in cases:
        resp = await client.get(f"{JOBS}/{job}/metrics", params=params)
        assert resp.status_code == 200, resp.text
        served = resp.json()["metrics"]
        if params.get("points") != 7:
            assert _close(served, await _from_rows(db, job, params)), params
    full = (await client.get(f"{JOBS}/{job}/metrics", params={"phase": "train"})).json()
    assert [(m["epoch"], m["batch"]) for m in full["metrics"]] == [(r[0], r[1]) for r in rows]
    assert [m["timestamp"] for m in full["metrics"]] == [iso(r[2]) for r in rows]

    for points, block in ((1000, 1), (7, BLOCK_POINTS), (n, 1), (n + 5, 1)):
        served = (
            await client.get(f"{JOBS}/{job}/metrics", params={"phase": "train", "points": points})
        ).json()["metrics"]
        expected = reference_downsample(rows, points, block)
        for entry in expected:
            entry["phase"] = "train"
        assert len(served) == len(expected) <= points
        assert _close(served, expected), points
    assert as_comparable(rows) == await chunks_of(db, uuid.UUID(job), "train")


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += _plan_nodes(child)
    return nodes


async def test_rows_query_plans_scan_once_without_statistics(db: asyncpg.Connection) -> None:
    """Fresh rows, no ANALYZE: every shape of the rows query scans the job's rows once, with
    no subplan or nested loop run per row (the old downsampling query re-ran a count per row)."""
    job = await new_job(db)
    base = utcnow()
    await db.copy_records_to_table(
        "training_metrics",
        columns=["timestamp", "id", "training_job_id", "epoch", "batch", "phase", "train_loss"],
        records=[
            (
                base + timedelta(milliseconds=i),
                uuid.uuid4(),
                uuid.UUID(job),
                i // 100 + 1,
                i % 100 + 1,
                "train",
                float(i),
            )
            for i in range(2000)
        ],
    )
    for analyzed in (False, True):
        if analyzed:
            await db.execute("ANALYZE training_metrics")
        await _assert_plans_scan_once(db, job)


async def _assert_plans_scan_once(db: asyncpg.Connection, job: str) -> None:
    for phase in ("epoch", "train"):
        for limit in (None, 500):
            for points in (None, 100):
                for columns in (False, True):
                    query, args = rows_query(uuid.UUID(job), phase, limit, points, columns)
                    plan = json.loads(await db.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *args))
                    nodes = _plan_nodes(plan[0]["Plan"])
                    scans = [n for n in nodes if n.get("Relation Name") == "training_metrics"]
                    shape = (phase, limit, points, columns)
                    assert len(scans) == 1, shape
                    assert not [n for n in nodes if n.get("Parent Relationship") == "SubPlan"]
                    assert not [n for n in nodes if n["Node Type"] == "Nested Loop"], shape

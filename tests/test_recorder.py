"""Recorder projection rules and stream handling, in-process against the real stores."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aredis
from support import wait_for
from support.recorder import FAST, drained, recorder

from services.recorder.settings import RecorderSettings
from services.recorder.stream import EventStream
from shared import keys
from shared.config import TrainingConfig
from shared.emit import AsyncEmitter
from shared.events import (
    BatchPoint,
    BatchProgress,
    CheckpointSaved,
    EpochCompleted,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobPaused,
    JobQueued,
    JobRequeued,
    JobResumed,
    JobStarted,
    TrackingLinked,
)
from shared.jobs import insert_job
from shared.settings import Settings


async def new_job(db: asyncpg.Connection, epochs: int = 4) -> str:
    row = await insert_job(db, "test", TrainingConfig(epochs=epochs))
    return str(row["id"])


def points(epoch: int, first: int, last: int, ts: float) -> list[BatchPoint]:
    return [
        BatchPoint(epoch, b, 1.0 / b, 0.5, 0.01, 0.3, ts + b * 0.001)
        for b in range(first, last + 1)
    ]


def epoch_done(job: str, epoch: int, val_loss: float, **kw: Any) -> EpochCompleted:
    return EpochCompleted(
        job_id=job,
        epoch=epoch,
        total_epochs=4,
        train_loss=1.0 / epoch,
        val_loss=val_loss,
        train_accuracy=0.5,
        val_accuracy=0.4,
        learning_rate=0.01,
        epoch_time_s=1.5,
        **kw,
    )


async def test_projection_of_a_whole_job(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await new_job(db)
    emitter = AsyncEmitter(redis_client)
    ts = 1_700_000_000.0
    async with recorder(settings):
        await emitter.emit(JobQueued(job_id=job, task_id="t", total_epochs=4, ts=ts))
        await emitter.emit(
            JobStarted(
                job_id=job, dataset_size=100, train_samples=80, val_samples=20,
                total_batches=10, ts=ts + 1,
            )
        )  # fmt: skip
        await emitter.emit(
            BatchProgress(job_id=job, epoch=1, batch=5, total_batches=10,
                          points=points(1, 1, 5, ts + 2), ts=ts + 2)
        )  # fmt: skip
        await wait_for(lambda: drained(redis_client), what="first events")
        row = await db.fetchrow("SELECT * FROM training_jobs WHERE id = $1", uuid.UUID(job))
        assert row["status"] == "running"
        assert row["current_epoch"] == 1 and row["current_batch"] == 5
        assert row["total_batches"] == 10
        assert row["progress_percent"] == pytest.approx(12.5)  # half of epoch 1 of 4
        assert row["dataset_size"] == 100 and row["val_samples"] == 20
        assert row["started_at"] is not None and row["completed_at"] is None

        await emitter.emit(epoch_done(job, 1, 0.9, ts=ts + 3))
        await emitter.emit(epoch_done(job, 2, 0.5, ts=ts + 4))
        await emitter.emit(epoch_done(job, 3, 0.7, ts=ts + 5))
        await emitter.emit(CheckpointSaved(job_id=job, epoch=3, path="/c/last.pt", ts=ts + 6))
        await emitter.emit(TrackingLinked(job_id=job, mlflow_run_id="run-1", ts=ts + 6.5))
        await wait_for(lambda: drained(redis_client), what="epochs")
        row = await db.fetchrow("SELECT * FROM training_jobs WHERE id = $1", uuid.UUID(job))
        assert row["current_epoch"] == 3
        assert row["progress_percent"] == pytest.approx(75.0)
        assert (row["best_epoch"], row["best_val_loss"]) == (2, 0.5)
        assert row["val_loss"] == 0.7 and row["train_loss"] == pytest.approx(1 / 3)
        assert row["checkpoint_path"] == "/c/last.pt" and row["mlflow_run_id"] == "run-1"

        last = await emitter.emit(
            JobCompleted(job_id=job, epochs_run=3, best_epoch=2, best_val_loss=0.5,
                         onnx_model_path="/c/model.onnx", ts=ts + 7)
        )  # fmt: skip
        await wait_for(lambda: drained(redis_client), what="completion")
    row = await db.fetchrow("SELECT * FROM training_jobs WHERE id = $1", uuid.UUID(job))
    assert row["status"] == "completed" and row["progress_percent"] == 100.0
    assert row["onnx_model_path"] == "/c/model.onnx"
    assert row["completed_at"] is not None and row["last_event_id"] == last

    events = await db.fetch(
        "SELECT * FROM training_events WHERE training_job_id = $1 ORDER BY id_ms, id_seq",
        uuid.UUID(job),
    )
    assert [e["type"] for e in events] == [
        "job_queued", "job_started", "batch_progress", "epoch_completed", "epoch_completed",
        "epoch_completed", "checkpoint_saved", "tracking_linked", "job_completed",
    ]  # fmt: skip
    assert events[-1]["event_id"] == last
    assert events[0]["payload"]["task_id"] == "t"
    metrics = await db.fetch(
        "SELECT * FROM training_metrics WHERE training_job_id = $1 ORDER BY timestamp",
        uuid.UUID(job),
    )
    train = [m for m in metrics if m["phase"] == "train"]
    epochs = [m for m in metrics if m["phase"] == "epoch"]
    assert [m["batch"] for m in train] == [1, 2, 3, 4, 5]
    assert train[1]["train_loss"] == 0.5 and train[1]["gradient_norm"] == 0.3
    assert [(m["epoch"], m["batch"], m["val_loss"]) for m in epochs] == [
        (1, None, 0.9), (2, None, 0.5), (3, None, 0.7),
    ]  # fmt: skip
    assert epochs[0]["epoch_time_s"] == 1.5


async def test_status_never_moves_backwards(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    cancelled, failed, started = await new_job(db), await new_job(db), await new_job(db)
    emitter = AsyncEmitter(redis_client)
    async with recorder(settings):
        # A late start after a cancel, even in a later batch, changes nothing.
        await emitter.emit(JobCancelled(job_id=cancelled))
        await emitter.emit(JobStarted(job_id=cancelled, dataset_size=5))
        await wait_for(lambda: drained(redis_client), what="cancel")
        await emitter.emit(JobStarted(job_id=cancelled, dataset_size=7))
        await emitter.emit(epoch_done(cancelled, 1, 0.3))
        # A terminal status is final: a later completion does not replace a failure.
        await emitter.emit(JobFailed(job_id=failed, error_message="out of memory"))
        await wait_for(lambda: drained(redis_client), what="failure")
        await emitter.emit(JobCompleted(job_id=failed, epochs_run=4))
        await emitter.emit(JobFailed(job_id=failed, error_message="second failure"))
        # A repeated or late `queued` does not undo `running`.
        await emitter.emit(JobStarted(job_id=started))
        await wait_for(lambda: drained(redis_client), what="start")
        await emitter.emit(JobQueued(job_id=started, task_id="x", total_epochs=4))
        await wait_for(lambda: drained(redis_client), what="late events")

    rows = {
        str(r["id"]): r
        for r in await db.fetch("SELECT * FROM training_jobs")
    }  # fmt: skip
    c = rows[cancelled]
    assert c["status"] == "cancelled" and c["started_at"] is None
    assert c["dataset_size"] is None and c["current_epoch"] == 0
    f = rows[failed]
    assert f["status"] == "failed" and f["error_message"] == "out of memory"
    assert f["progress_percent"] == 0.0
    assert rows[started]["status"] == "running"
    # Every event is still in the log, late ones included, except the two late terminal events
    # of `failed`: the emitter's final-state claim never emits them (the recorder's own guard
    # against them is tested in test_projection_reducer.py).
    count = await db.fetchval("SELECT count(*) FROM training_events")
    assert count == 7
    # The cancelled job's late epoch is history too.
    assert await db.fetchval("SELECT count(*) FROM training_metrics") == 1


async def test_out_of_order_batches_keep_the_newest_values(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    """Writing a newer batch first (a peer's claimed batch) must not be undone by older ones."""
    from services.recorder.entries import parse_entry
    from services.recorder.store import Prepared, Store

    job = await new_job(db)
    emitter = AsyncEmitter(redis_client)
    ids = [await emitter.emit(epoch_done(job, e, 1.0 - e / 10)) for e in (1, 2, 3)]
    entries = {
        eid.decode(): parse_entry(eid, fields)
        for eid, fields in await redis_client.xrange(keys.EVENTS_STREAM)
    }
    assert settings.database_url
    store = Store(settings.database_url, FAST)
    try:
        conn = await store.connection()
        await store.write(conn, Prepared.of([entries[ids[2]]]))
        await store.write(conn, Prepared.of([entries[ids[0]], entries[ids[1]]]))
        await store.write(conn, Prepared.of([entries[ids[0]]]))  # a redelivery
    finally:
        await store.close()
    row = await db.fetchrow("SELECT * FROM training_jobs WHERE id = $1", uuid.UUID(job))
    assert row["current_epoch"] == 3 and row["last_event_id"] == ids[2]
    assert row["val_loss"] == pytest.approx(0.7) and row["progress_percent"] == 75.0
    assert (row["best_epoch"], row["best_val_loss"]) == (3, pytest.approx(0.7))
    assert await db.fetchval("SELECT count(*) FROM training_events") == 3
    assert await db.fetchval("SELECT count(*) FROM training_metrics") == 3


async def test_unknown_jobs_and_bad_entries_are_acked_and_skipped(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await new_job(db)
    ghost = str(uuid.uuid4())
    emitter = AsyncEmitter(redis_client)
    stream = keys.EVENTS_STREAM
    async with recorder(settings):
        await emitter.emit(JobStarted(job_id=ghost))
        await emitter.emit(BatchProgress(job_id=ghost, epoch=1, batch=1, total_batches=2,
                                         points=points(1, 1, 1, 1.7e9)))  # fmt: skip
        await redis_client.xadd(stream, {"job": job, "data": b"{not json"})
        await redis_client.xadd(stream, {"job": job, "data": json.dumps(["no", "type"])})
        await redis_client.xadd(stream, {"job": "not-a-uuid", "data": b"{}"})
        await redis_client.xadd(stream, {"something": "else"})
        future = {"type": "job_from_the_future", "job_id": job, "ts": 1.7e9, "v": 2, "why": "later"}
        future_id = await redis_client.xadd(stream, {"job": job, "data": json.dumps(future)})
        # A known type with a missing field: undecodable, but still a typed JSON object.
        broken = {"type": "epoch_completed", "job_id": job, "epoch": 1}
        await redis_client.xadd(stream, {"job": job, "data": json.dumps(broken)})
        await emitter.emit(JobStarted(job_id=job, dataset_size=3))
        await wait_for(lambda: drained(redis_client), what="all entries acked")

    rows = await db.fetch(
        "SELECT event_id, type, payload FROM training_events ORDER BY id_ms, id_seq"
    )
    assert [r["type"] for r in rows] == [
        "job_from_the_future", "epoch_completed", "job_started",
    ]  # fmt: skip
    assert rows[0]["event_id"] == future_id.decode() and rows[0]["payload"] == future
    assert await db.fetchval("SELECT count(*) FROM training_metrics") == 0
    row = await db.fetchrow("SELECT * FROM training_jobs WHERE id = $1", uuid.UUID(job))
    assert row["status"] == "running" and row["dataset_size"] == 3


async def test_claims_entries_of_a_dead_consumer_and_trims_below_them(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await new_job(db)
    emitter = AsyncEmitter(redis_client)
    dead = EventStream(redis_client, "dead-consumer", FAST)
    await dead.ensure_group()
    first = [await emitter.emit(JobStarted(job_id=job))]
    first += [await emitter.emit(epoch_done(job, e, 0.5)) for e in (1, 2)]
    taken = await dead.read(10)  # delivered to a consumer that then dies
    assert [eid.decode() for eid, _ in taken] == first
    # Nothing delivered-but-unacked may be trimmed.
    assert await dead.safe_trim_id() == first[0]
    assert await dead.trim() == 0
    later = await emitter.emit(epoch_done(job, 3, 0.4))
    async with recorder(settings):
        await wait_for(lambda: drained(redis_client), what="claimed entries")
        await wait_for(
            lambda: _stream_ids(redis_client, lambda ids: ids == [later]), what="trimmed stream"
        )
    assert await db.fetchval("SELECT count(*) FROM training_events") == 4
    row = await db.fetchrow("SELECT * FROM training_jobs WHERE id = $1", uuid.UUID(job))
    assert row["current_epoch"] == 3


async def _stream_ids(client: aredis.Redis, check: Callable[[list[str]], bool]) -> bool:
    ids = [eid.decode() for eid, _ in await client.xrange(keys.EVENTS_STREAM)]
    return check(ids)


def test_recorder_settings_from_env() -> None:
    rs = RecorderSettings.from_env(
        {
            "HEIMDALL_RECORDER_BATCH_SIZE": "250",
            "HEIMDALL_RECORDER_CLAIM_IDLE_MS": "1500",
            "HEIMDALL_METRICS_RETENTION_DAYS": "30",
            "HEIMDALL_METRICS_COMPRESS_AFTER_DAYS": "2.5",
        }
    )
    assert rs.batch_size == 250 and rs.claim_idle_ms == 1500
    assert rs.metrics_retention_days == 30.0 and rs.metrics_compress_after_days == 2.5
    assert RecorderSettings.from_env({}) == RecorderSettings()


async def test_metrics_policies_skip_plain_postgres(db: asyncpg.Connection) -> None:
    from services.recorder.timescale import apply_policies, timescale_enabled

    if await timescale_enabled(db):
        pytest.skip("TimescaleDB present: the policies are exercised instead")
    assert await apply_policies(db, retention_days=30, compress_after_days=7) == []


def test_metric_row_ids_are_uuid5_of_event_id_and_index() -> None:
    from services.recorder.entries import METRICS_NAMESPACE, point_ids

    expected = [uuid.uuid5(METRICS_NAMESPACE, f"1732790000000-7/{i}") for i in range(300)]
    assert [uuid.UUID(u) for u in point_ids("1732790000000-7", 300)] == expected


async def test_an_entry_the_database_rejects_is_dropped_alone(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    job = await new_job(db)
    emitter = AsyncEmitter(redis_client)
    await emitter.emit(JobStarted(job_id=job))
    # An epoch beyond INTEGER: the whole batch fails, then every entry but this one is written.
    bad = BatchPoint(2**40, 1, 0.1, 0.1, 0.1, None, 1.7e9)
    await emitter.emit(BatchProgress(job_id=job, epoch=1, batch=1, total_batches=9, points=[bad]))
    await emitter.emit(epoch_done(job, 1, 0.5))
    async with recorder(settings):
        await wait_for(lambda: drained(redis_client), what="all entries acked")
    types = [
        r[0] for r in await db.fetch("SELECT type FROM training_events ORDER BY id_ms, id_seq")
    ]
    assert types == ["job_started", "epoch_completed"]
    assert await db.fetchval("SELECT count(*) FROM training_metrics") == 1


async def test_an_unreachable_database_delays_but_drops_nothing(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    from structlog.testing import capture_logs

    job = await new_job(db)
    emitter = AsyncEmitter(redis_client)
    ids = [await emitter.emit(JobStarted(job_id=job)), await emitter.emit(epoch_done(job, 1, 0.5))]
    assert settings.database_url
    wrong = Settings(
        redis_url=settings.redis_url,
        database_url=settings.database_url.replace("heimdall_test_", "heimdall_missing_"),
    )
    with capture_logs() as logs:
        async with recorder(wrong):

            async def waiting() -> bool:
                return any(e["event"] == "database unavailable, retrying" for e in logs)

            await wait_for(waiting, what="the recorder to wait for the database")
    assert await db.fetchval("SELECT count(*) FROM training_events") == 0
    async with recorder(settings):
        await wait_for(lambda: drained(redis_client), what="all entries acked")
    stored = await db.fetch("SELECT event_id FROM training_events ORDER BY id_ms, id_seq")
    assert [r[0] for r in stored] == ids


async def test_equal_rank_statuses_follow_event_order(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    """Running and paused have the same rank: only a newer event may switch between them."""
    from services.recorder.entries import parse_entry
    from services.recorder.store import Prepared, Store

    job = await new_job(db)
    emitter = AsyncEmitter(redis_client)
    older = await emitter.emit(BatchProgress(job_id=job, epoch=1, batch=1, total_batches=4))
    # A pause recorded by a newer event (as a peer's batch would have written it).
    paused_at = await emitter.emit(JobStarted(job_id=job))
    await db.execute(
        "UPDATE training_jobs SET status = 'paused', last_event_id = $2 WHERE id = $1",
        uuid.UUID(job),
        paused_at,
    )
    newer = await emitter.emit(BatchProgress(job_id=job, epoch=1, batch=2, total_batches=4))
    entries = {
        eid.decode(): parse_entry(eid, fields)
        for eid, fields in await redis_client.xrange(keys.EVENTS_STREAM)
    }
    assert settings.database_url
    store = Store(settings.database_url, FAST)
    try:
        conn = await store.connection()
        await store.write(conn, Prepared.of([entries[older]]))
        status = await db.fetchval("SELECT status FROM training_jobs WHERE id = $1", uuid.UUID(job))
        assert status == "paused"
        await store.write(conn, Prepared.of([entries[newer]]))
    finally:
        await store.close()
    row = await db.fetchrow("SELECT * FROM training_jobs WHERE id = $1", uuid.UUID(job))
    assert row["status"] == "running" and row["current_batch"] == 2


async def test_pause_resume_and_requeue_are_projected(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    """Paused with its checkpoint, resumed under a new queue task, re-queued by a reaper."""
    job = await new_job(db)
    emitter = AsyncEmitter(redis_client)
    async with recorder(settings):
        await emitter.emit(JobStarted(job_id=job))
        await emitter.emit(BatchProgress(job_id=job, epoch=2, batch=3, total_batches=4))
        await emitter.emit(JobPaused(job_id=job, checkpoint_path="/x/resume.pt", epoch=2, batch=3))
        await wait_for(lambda: drained(redis_client), what="the pause")
        row = await db.fetchrow("SELECT * FROM training_jobs WHERE id = $1", uuid.UUID(job))
        assert row["status"] == "paused" and row["checkpoint_path"] == "/x/resume.pt"
        assert row["current_epoch"] == 2

        await emitter.emit(JobResumed(job_id=job, task_id="task-2"))
        await emitter.emit(JobRequeued(job_id=job, reason="shutdown"))  # keeps the task
        await wait_for(lambda: drained(redis_client), what="the resume")
        row = await db.fetchrow("SELECT * FROM training_jobs WHERE id = $1", uuid.UUID(job))
        assert row["status"] == "running" and row["celery_task_id"] == "task-2"

        await emitter.emit(JobRequeued(job_id=job, reason="lease expired", task_id="task-3"))
        await wait_for(lambda: drained(redis_client), what="the re-queue")
        row = await db.fetchrow("SELECT * FROM training_jobs WHERE id = $1", uuid.UUID(job))
        assert row["status"] == "running" and row["celery_task_id"] == "task-3"

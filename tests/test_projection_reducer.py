"""The recorder's projection against the one reducer: random event sequences folded two ways.

One way is `shared.live_state.apply` in memory, event by event; the other is the recorder's
real write path (`Store.write`: insert, dedupe, project) into PostgreSQL, batch by batch, with
batches split at random, delivered out of order and delivered again. After every batch the
row must equal the in-memory fold of what the database has accepted so far, in the order it
accepted it; delivered in order, any split must end where folding every event one by one ends.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import asyncpg
import msgspec
from support.recorder import FAST

from services.recorder.entries import Entry, parse_entry
from services.recorder.projection import WRITTEN
from services.recorder.store import Prepared, Store
from shared import live_state
from shared.config import TrainingConfig
from shared.events import (
    BatchPoint,
    BatchProgress,
    CheckpointSaved,
    EpochCompleted,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobPaused,
    JobQueued,
    JobRequeued,
    JobResumed,
    JobStarted,
    JobWarning,
    TrackingLinked,
    decode_event,
    encode_event,
)
from shared.jobs import insert_job
from shared.settings import Settings
from shared.status import TERMINAL, rank

SEEDS = range(16)
TS = 1_700_000_000.0


def _epoch(rng: random.Random, job: str, epoch: int, ts: float) -> EpochCompleted:
    val = rng.choice([None, round(rng.uniform(0.1, 2.0), 3)])
    best = rng.random()
    return EpochCompleted(
        job_id=job, epoch=epoch, total_epochs=rng.choice([0, 6]), ts=ts,
        train_loss=rng.uniform(0.1, 2.0), val_loss=val, train_accuracy=rng.random(),
        val_accuracy=None if val is None else rng.random(), learning_rate=rng.uniform(0, 0.01),
        gradient_norm=rng.choice([None, rng.uniform(0, 5)]),
        is_best=best < 0.3, best_epoch=epoch - 1 if 0.3 <= best < 0.5 and epoch > 1 else None,
        best_val_loss=rng.uniform(0.1, 1.0) if 0.4 <= best < 0.5 else None,
    )  # fmt: skip


def _middle(rng: random.Random, job: str, epoch: int, ts: float) -> Event:
    """One event of a job under way."""
    match rng.randrange(10):
        case 0:
            return JobStarted(
                job_id=job, ts=ts, dataset_size=rng.choice([0, 100]), train_samples=80,
                val_samples=rng.choice([0, 20]), total_batches=rng.choice([0, 5]),
            )  # fmt: skip
        case 1 | 2 | 3:
            batch = rng.randint(1, 5)
            pts = [BatchPoint(epoch, b, rng.random(), rng.random(), 0.01, None, ts) for b in
                   range(1, batch + 1)] if rng.random() < 0.8 else []  # fmt: skip
            return BatchProgress(
                job_id=job, ts=ts, epoch=epoch, batch=batch, total_batches=5, points=pts
            )
        case 4 | 5:
            return _epoch(rng, job, epoch, ts)
        case 6:
            return CheckpointSaved(job_id=job, ts=ts, epoch=epoch, path=f"/c/{epoch}.pt")
        case 7:
            path = rng.choice([None, f"/c/pause-{epoch}.pt"])
            return JobPaused(job_id=job, ts=ts, checkpoint_path=path, epoch=epoch)
        case 8:
            if rng.random() < 0.5:
                return JobResumed(job_id=job, ts=ts, task_id=str(uuid.uuid4()))
            task = rng.choice(["", str(uuid.uuid4())])
            return JobRequeued(job_id=job, ts=ts, task_id=task, reason="lost")
        case _:
            if rng.random() < 0.5:
                return TrackingLinked(job_id=job, ts=ts, mlflow_run_id=f"run-{rng.randrange(9)}")
            return JobWarning(job_id=job, ts=ts, message="careful")


def _terminal(rng: random.Random, job: str, ts: float) -> Event:
    match rng.randrange(3):
        case 0:
            return JobCompleted(
                job_id=job, ts=ts, epochs_run=3, best_epoch=rng.choice([None, 2]),
                best_val_loss=rng.choice([None, 0.4]), onnx_model_path="/c/model.onnx",
                checkpoint_path=rng.choice([None, "/c/best.pt"]),
            )  # fmt: skip
        case 1:
            return JobFailed(job_id=job, ts=ts, error_message="boom")
    return JobCancelled(job_id=job, ts=ts)


def sequence(rng: random.Random, job: str) -> list[Event]:
    """A job's events: queued, a random middle, at most one terminal event (the emitter's
    final claim allows no second), sometimes stragglers after it."""
    ts = TS + rng.uniform(0, 1000)
    out: list[Event] = [JobQueued(job_id=job, ts=ts, task_id=str(uuid.uuid4()), total_epochs=6)]
    epoch = 1
    for _ in range(rng.randint(0, 25)):
        ts += rng.uniform(0, 2)
        event = _middle(rng, job, epoch, ts)
        if isinstance(event, EpochCompleted):
            epoch += 1
        out.append(event)
    if rng.random() < 0.7:
        out.append(_terminal(rng, job, ts + 1))
        out += [_middle(rng, job, epoch, ts + 2) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.2:
        rng.shuffle(out)  # not what a worker emits, and still never backwards
    return out


def entries_of(jobs: dict[str, list[Event]], rng: random.Random, seed: int) -> list[Entry]:
    """Every job's events, interleaved, with stream ids in order (each seed's of its own)."""
    queues = {job: list(events) for job, events in jobs.items()}
    out: list[Entry] = []
    ms = 1_700_000_000_000 + seed * 1_000_000
    while queues:
        job = rng.choice(sorted(queues))
        event = queues[job].pop(0)
        if not queues[job]:
            del queues[job]
        ms += rng.choice([0, 1, 5])
        seq = sum(1 for e in out if e.id_ms == ms)
        fields = {b"job": job.encode(), b"data": encode_event(event)}
        out.append(parse_entry(f"{ms}-{seq}".encode(), fields))
    return out


def batches(entries: list[Entry], rng: random.Random, *, shuffle: bool) -> list[list[Entry]]:
    """`entries` cut at random; with `shuffle`, neighbours swapped and some sent twice."""
    cuts = sorted(rng.sample(range(1, len(entries)), min(len(entries) - 1, rng.randint(0, 8))))
    out = [entries[a:b] for a, b in zip([0, *cuts], [*cuts, len(entries)], strict=True)]
    if shuffle:
        for i in range(len(out) - 1):
            if rng.random() < 0.4:
                out[i], out[i + 1] = out[i + 1], out[i]
        out += [rng.choice(out) for _ in range(rng.randint(0, 2))]
    return out


def projected(state: dict[str, Any]) -> dict[str, Any]:
    return {column: state.get(column) for column in WRITTEN}


async def rows(db: asyncpg.Connection, jobs: list[str]) -> dict[str, dict[str, Any]]:
    records = await db.fetch(
        f"SELECT id, {', '.join(WRITTEN)} FROM training_jobs WHERE id = ANY($1::uuid[])",
        [uuid.UUID(j) for j in jobs],
    )
    return {str(r["id"]): dict(r) for r in records}


async def _run(
    settings: Settings, db: asyncpg.Connection, seed: int, *, shuffle: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Write one random history through the store, checking every batch against the
    in-memory fold of the same accepted events; returns the rows before and after."""
    rng = random.Random(seed)
    jobs = [str((await insert_job(db, "p", TrainingConfig(epochs=6)))["id"]) for _ in range(3)]
    start = await rows(db, jobs)
    memory = {job: live_state.from_row(row) for job, row in start.items()}
    accepted: set[str] = set()
    entries = entries_of({job: sequence(rng, job) for job in jobs}, rng, seed)
    assert settings.database_url
    store = Store(settings.database_url, FAST)
    try:
        conn = await store.connection()
        for batch in batches(entries, rng, shuffle=shuffle):
            await store.write(conn, Prepared.of(batch))
            for entry in sorted(batch, key=lambda e: e.key):
                if entry.event_id in accepted:
                    continue  # the database has it already: not new, not projected
                accepted.add(entry.event_id)
                job = str(entry.job_id)
                assert entry.event is not None
                memory[job] = live_state.apply(memory[job], entry.event, entry.event_id)
            now = await rows(db, jobs)
            for job in jobs:
                assert projected(now[job]) == projected(memory[job]), (seed, job)
    finally:
        await store.close()
    return start, await rows(db, jobs)


async def test_random_histories_in_order_match_the_reducer_event_by_event(
    settings: Settings, db: asyncpg.Connection
) -> None:
    for seed in SEEDS:
        start, final = await _run(settings, db, seed, shuffle=False)
        # In order, batch boundaries make no difference: the row is the plain fold.
        for job, row in final.items():
            history = await db.fetch(
                "SELECT event_id, payload FROM training_events WHERE training_job_id = $1"
                " ORDER BY id_ms, id_seq",
                uuid.UUID(job),
            )
            state = live_state.from_row(start[job])
            for record in history:
                event = decode_event(msgspec.json.encode(record["payload"]))
                state = live_state.apply(state, event, record["event_id"])
            assert projected(row) == projected(state), (seed, job)


async def test_random_histories_out_of_order_never_go_backwards(
    settings: Settings, db: asyncpg.Connection
) -> None:
    for seed in SEEDS:
        _, final = await _run(settings, db, 1000 + seed, shuffle=True)
        for job, row in final.items():
            types = await db.fetch(
                "SELECT type FROM training_events WHERE training_job_id = $1"
                " ORDER BY id_ms, id_seq",
                uuid.UUID(job),
            )
            terminal = [t["type"] for t in types if t["type"] in _TERMINAL_TYPES]
            if terminal:
                # The one terminal event decides, whatever order its batch came in.
                assert row["status"] == _TERMINAL_TYPES[terminal[0]], (seed, job)
                assert row["completed_at"] is not None
            else:
                assert rank(row["status"]) >= rank("queued") and row["status"] not in TERMINAL


_TERMINAL_TYPES = {
    "job_completed": "completed",
    "job_failed": "failed",
    "job_cancelled": "cancelled",
}

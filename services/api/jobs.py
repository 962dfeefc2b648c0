"""REST endpoints of training jobs."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path, PurePath
from typing import Annotated, Any

import msgspec
import structlog
from arq.constants import in_progress_key_prefix as IN_PROGRESS_PREFIX
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream
from msgspec import Meta
from redis.exceptions import RedisError

from services.api import inputs, store, views
from services.api import metrics as series_reads
from services.api.datasets import check_split
from services.api.errors import Conflict, InvalidInput, NotFound, Unavailable, Unschedulable
from services.api.queue import queue_fields
from services.api.resources import Resources
from services.tracking import delete_tracking
from shared import job_state, keys, workers
from shared.capabilities import admission
from shared.commands import CancelJob, DeleteJob, PauseJob, send_command
from shared.config import ConfigError, TrainingConfig
from shared.deletion import forget
from shared.emit import DELETED
from shared.event_log import events_after
from shared.events import (
    JobCancelled,
    JobPaused,
    JobQueued,
    JobResumed,
    QueuedUnrunnable,
    parse_event_id,
)
from shared.ids import InvalidJobId, canonical_job_id
from shared.jobs import fetch_job, insert_job
from shared.status import TERMINAL, JobStatus
from shared.storage import check_key
from shared.storage import job_key as object_key

log = structlog.get_logger(__name__)

JobName = Annotated[str, Meta(min_length=1, max_length=255)]

UNQUEUE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('ZREM', KEYS[1], ARGV[1])
"""
"""Take a task off the arq queue unless a worker has started it (arq's in-progress key)."""


class CreateJob(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /training/jobs. Every config field is optional and has the seed's default."""

    job_name: JobName
    config: TrainingConfig = msgspec.field(default_factory=TrainingConfig)


_strict_decoder = msgspec.json.Decoder(CreateJob)


def _field_of(message: str) -> str | None:
    if "at `$." in message:
        return message.rsplit("at `$.", 1)[1].rstrip("`")
    return None


def _res(state: State) -> Resources:
    return state.resources  # type: ignore[no-any-return,unused-ignore]


def job_key(raw: str) -> str:
    """The canonical id of a path's job id (any spelling of a UUID), or 404."""
    try:
        return canonical_job_id(raw)
    except InvalidJobId as exc:
        raise NotFound(str(exc)) from None


async def _job_or_404(res: Resources, raw: str) -> tuple[str, Any]:
    """(canonical id, row) of the job a path names; 404 when there is none."""
    job_id = job_key(raw)
    async with res.db.acquire() as conn:
        row = await fetch_job(conn, job_id)
    if row is None:
        raise NotFound(f"no training job with id {raw!r}")
    return job_id, row


async def _now(res: Resources, row: Any, *, strict: bool = False) -> dict[str, Any]:
    """The job as it stands now, before the recorder catches up (see shared/job_state)."""
    return await job_state.current(res.redis, row, strict=strict)


async def _unqueue(res: Resources, task_id: str | None) -> bool:
    """Take the task off the queue unless a worker has taken it; True when it was waiting."""
    if not task_id:
        return False
    unqueue = res.redis.register_script(UNQUEUE)
    in_progress = f"{IN_PROGRESS_PREFIX}{task_id}"
    return bool(await unqueue(keys=[keys.ARQ_QUEUE, in_progress], args=[task_id]))


async def _detail(res: Resources, now: Any) -> dict[str, Any]:
    """The job's detail, with its place in the queue while it waits there."""
    detail = views.job_detail(now)
    detail.update(await queue_fields(res.redis, now))
    return detail


def websocket_url(request: Request[Any, Any, Any], job_id: str) -> str:
    """Built from the request's own scheme, host and port, so proxies and ports just work."""
    scheme = "wss" if request.url.scheme == "https" else "ws"
    host = request.headers.get("host") or request.url.netloc
    return f"{scheme}://{host}/ws/training/{job_id}"


class JobsController(Controller):
    path = "/api/v1/training/jobs"
    tags = ["training jobs"]

    @post("/", status_code=201, summary="Create a training job")
    async def create(
        self,
        data: JSONBody[CreateJob],
        state: State,
        request: Request[Any, Any, Any],
        queue_anyway: Annotated[
            bool,
            QueryParameter(
                description="queue the job even when no connected worker can run its config"
                " (a worker that can may join later)"
            ),
        ] = False,
    ) -> dict[str, Any]:
        """422 naming the field when no connected worker can run the config (unless
        `queue_anyway`); with no worker connected at all the job is queued."""
        res = _res(state)
        # Litestar converts leniently ("5" → 5, 1 → True); a training config must not guess,
        # so the body is decoded once more, strictly, as JSON.
        try:
            data = _strict_decoder.decode(await request.body())
        except msgspec.ValidationError as exc:
            raise InvalidInput(str(exc), _field_of(str(exc))) from None
        data.job_name = inputs.job_name(data.job_name)
        try:
            data.config.check()
        except ConfigError as exc:
            raise InvalidInput(f"config.{exc.field}: {exc}", f"config.{exc.field}") from None
        unrunnable = admission(await workers.connected(res.redis), data.config)
        if unrunnable is not None and not queue_anyway:
            raise Unschedulable(unrunnable.reason, f"config.{unrunnable.field}")
        job_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
        async with res.db.acquire() as conn:
            await check_split(conn, data.config)
            row = await insert_job(conn, data.job_name, data.config, job_id=job_id, task_id=task_id)
        # The row is committed before the job is queued, so a worker or the recorder that
        # sees the job at once also finds its row.
        try:
            await res.redis.enqueue_job("train_job", job_id, _job_id=task_id)
            await res.emitter.emit(
                JobQueued(job_id=job_id, task_id=task_id, total_epochs=data.config.epochs)
            )
            if unrunnable is not None:
                message = f"queued anyway: {unrunnable.reason.split(': ', 1)[-1]}"
                await res.emitter.emit(
                    QueuedUnrunnable(job_id=job_id, message=message, field=unrunnable.field)
                )
        except (RedisError, OSError) as exc:
            await store.delete_job(res.db, job_id)
            raise Unavailable(f"the job queue (Redis) is unreachable: {exc}") from None
        log.info("job created", job_id=job_id, task_id=task_id)
        # The config as validated, in schema order (JSONB would reorder its keys).
        return {**views.created_body(row), "config": data.config.to_dict()}

    @get("/", summary="List training jobs, newest first")
    async def list_jobs(
        self,
        state: State,
        status: FromQuery[JobStatus | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=2**31 - 1)] = 0,
    ) -> dict[str, Any]:
        rows, total = await store.list_jobs(_res(state).db, status, limit, offset)
        return {"jobs": [views.job_summary(r) for r in rows], "total": total}

    @get("/{job_id:str}", summary="One job with its recent metrics and live URL")
    async def get_job(
        self, job_id: FromPath[str], state: State, request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        res = _res(state)
        job_id, row = await _job_or_404(res, job_id)
        return {
            "job": await _detail(res, await _now(res, row)),
            "recent_metrics": await series_reads.recent_epochs(res.db, job_id, 10),
            "websocket_url": websocket_url(request, job_id),
        }

    @delete("/{job_id:str}", status_code=204, summary="Cancel if active, then delete every trace")
    async def delete_job(self, job_id: FromPath[str], state: State) -> None:
        res = _res(state)
        job_id, row = await _job_or_404(res, job_id)
        await _unqueue(res, row["celery_task_id"])
        # The command stops a worker training the job (it removes what it wrote once it has
        # stopped); `forget` marks the job deleted and removes every key naming it, and no
        # later write can bring one back. Then the rows and files.
        await send_command(res.redis, DeleteJob(job_id=job_id))
        await forget(res.redis, job_id)
        await store.delete_job(res.db, job_id)
        _remove_artifacts(res.settings.artifacts_dir, job_id)
        await asyncio.to_thread(res.blobs.delete_job, job_id)
        await asyncio.to_thread(delete_tracking, res.settings, job_id)
        log.info("job deleted", job_id=job_id)

    @post("/{job_id:str}/cancel", status_code=200, summary="Stop the job, keep its data")
    async def cancel(self, job_id: FromPath[str], state: State) -> dict[str, Any]:
        res = _res(state)
        job_id, row = await _job_or_404(res, job_id)
        now = await _now(res, row, strict=True)
        if now["status"] in TERMINAL:
            raise Conflict(f"job {job_id} is already {now['status']}; nothing to cancel")
        # The final state is decided once, in Redis: this cancel wins only if no completion or
        # failure was claimed first (the row may not show it yet). The one job_cancelled event
        # is emitted here; the command then stops the worker, whose own cancel loses the claim.
        claim = await res.emitter.send(JobCancelled(job_id=job_id))
        if claim.final == DELETED:
            raise NotFound(f"no training job with id {job_id!r}")
        if not claim.won:
            raise Conflict(f"job {job_id} is already {claim.final}; nothing to cancel")
        await send_command(res.redis, CancelJob(job_id=job_id))
        # A task no worker has taken leaves the queue now, so that it holds no place there.
        await _unqueue(res, now["celery_task_id"])
        log.info("job cancelled", job_id=job_id)
        return {"job": views.job_detail(await _now(res, row))}

    @post("/{job_id:str}/pause", status_code=200, summary="Pause at the next batch boundary")
    async def pause(self, job_id: FromPath[str], state: State) -> dict[str, Any]:
        res = _res(state)
        job_id, row = await _job_or_404(res, job_id)
        now = await _now(res, row, strict=True)
        if now["status"] not in (JobStatus.QUEUED, JobStatus.RUNNING):
            raise Conflict(
                f"job {job_id} is {now['status']}; only a queued or running job can be paused"
            )
        # The command's flag makes any worker that picks the job up later pause it at once; the
        # command reaches the worker training it, which checkpoints and emits JobPaused.
        await send_command(res.redis, PauseJob(job_id=job_id))
        waiting = await _unqueue(res, now["celery_task_id"])
        if waiting:
            # No worker has it: nothing to checkpoint, it is paused now.
            await res.emitter.emit(JobPaused(job_id=job_id))
        log.info("job pause requested", job_id=job_id, waiting=bool(waiting))
        return {"job": views.job_detail(await _now(res, row))}

    @post("/{job_id:str}/resume", status_code=200, summary="Queue a paused job again")
    async def resume(self, job_id: FromPath[str], state: State) -> dict[str, Any]:
        res = _res(state)
        job_id, row = await _job_or_404(res, job_id)
        now = await _now(res, row, strict=True)
        if now["status"] != JobStatus.PAUSED:
            raise Conflict(f"job {job_id} is {now['status']}; only a paused job can be resumed")
        # A new queue task: arq keeps the paused task's id until its result expires. The event
        # moves the job to `running` under that task id (`celery_task_id` always names the
        # job's current queue task), as the recorder projects it.
        task_id = str(uuid.uuid4())
        await res.redis.delete(keys.pause_flag(job_id))
        await res.emitter.emit(JobResumed(job_id=job_id, task_id=task_id))
        await res.redis.enqueue_job("train_job", job_id, _job_id=task_id)
        log.info("job resumed", job_id=job_id, task_id=task_id)
        return {"job": views.job_detail(await _now(res, row))}

    @get("/{job_id:str}/metrics", summary="Metrics for charts")
    async def metrics(
        self,
        job_id: FromPath[str],
        state: State,
        limit: Annotated[int | None, QueryParameter(ge=1, le=1_000_000)] = None,
        phase: Annotated[str, QueryParameter(pattern="^(epoch|train|val|test)$")] = "epoch",
        points: Annotated[int | None, QueryParameter(ge=2, le=100_000)] = None,
        format: Annotated[str, QueryParameter(pattern="^(rows|columns)$")] = "rows",
    ) -> Response[bytes]:
        """`metrics` is a list of rows, or with `format=columns` one array per field."""
        res = _res(state)
        job_id, row = await _job_or_404(res, job_id)
        key = (job_id, row["last_event_id"], phase, limit, points, format)
        body = res.metrics_cache.get(key)
        if body is None:
            body = await series_reads.metrics_json(
                res.db, job_id, phase, limit, points, columns=format == "columns"
            )
            res.metrics_cache.put(key, body)
        head = f'{{"job_id":"{job_id}","phase":"{phase}","metrics":'.encode()
        return Response(head + body + b"}", media_type="application/json")

    @get("/{job_id:str}/events", summary="The job's event log, in order")
    async def events(
        self,
        job_id: FromPath[str],
        state: State,
        after: Annotated[
            str | None, QueryParameter(description="an event_id: only events after it")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
    ) -> Response[bytes]:
        res = _res(state)
        if after:
            parse_event_id(after)  # a bad id is a 400 naming `after` (shared.events)
        job_id, _ = await _job_or_404(res, job_id)
        events = await events_after(res.db, res.redis, job_id, after, limit)
        last = events[-1].event_id if events else after
        body = msgspec.json.encode({"job_id": job_id, "events": events, "last_event_id": last})
        return Response(body, media_type="application/json")

    @get("/{job_id:str}/artifacts/{kind:str}", summary="Download the checkpoint or ONNX model")
    async def artifact(self, job_id: FromPath[str], kind: FromPath[str], state: State) -> Stream:
        res = _res(state)
        job_id, row = await _job_or_404(res, job_id)
        column = ARTIFACT_COLUMNS.get(kind)
        if column is None:
            raise NotFound(f"no artifact kind {kind!r}; use 'checkpoint' or 'onnx'")
        stored = (await _now(res, row))[column]
        if not stored:
            raise NotFound(f"job {job_id} has no {kind} yet")
        # The worker stores each artifact under the job's prefix by its file name.
        name = PurePath(stored).name
        try:
            key = object_key(job_id, check_key(name))
            size = await res.blobs.size_async(key)
        except (ValueError, NotFound):
            raise NotFound(f"the {kind} file of job {job_id} is missing") from None
        # Guessed from the suffix, `.pt` would go out as a SNES page table.
        return Stream(
            res.blobs.stream_async(key),
            media_type="application/octet-stream",
            headers={
                "Content-Length": str(size),
                "Content-Disposition": f'attachment; filename="{job_id}-{name}"',
            },
        )


ARTIFACT_COLUMNS = {"checkpoint": "checkpoint_path", "onnx": "onnx_model_path"}


def _job_dir(artifacts_dir: Path, job_id: str) -> Path:
    return (artifacts_dir / canonical_job_id(job_id)).resolve()


def _remove_artifacts(artifacts_dir: Path, job_id: str) -> None:
    shutil.rmtree(_job_dir(artifacts_dir, job_id), ignore_errors=True)

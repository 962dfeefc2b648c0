"""Following one job's event stream into the enabled trackers.

`track_job` reads the job's Redis stream from the beginning (or from where an earlier attempt
of the same job left off) until a final event, hands each batch of events to TensorBoard (in a
thread) and MLflow (bounded calls in threads), and announces the job's tracking with a
`TrackingLinked` event after the job's `JobStarted`. It never raises for a tracker's failure:
a tracker that fails is given up for the job with one `JobWarning` event, and training never
waits for any of it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.tracking.export import StoreExport
from services.tracking.mlflow_sink import MlflowSink
from services.tracking.settings import (
    DEFAULT_MLFLOW_TIMEOUT_S,
    TrackingSettings,
    state_path,
    tensorboard_dir,
    tensorboard_installed,
)
from services.tracking.tensorboard import TensorBoardSink
from shared import keys
from shared.aio import raise_if_cancelling
from shared.commands import DeleteJob
from shared.emit import AsyncEmitter
from shared.errors import HeimdallError
from shared.events import (
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobStarted,
    JobWarning,
    TrackingLinked,
    decode_event,
)
from shared.retry import Backoff, retry
from shared.settings import Settings
from shared.storage import BlobStore

log = structlog.get_logger(__name__)

READ_COUNT = 500
"""Stream entries read at once; one read becomes one TensorBoard flush and one MLflow batch."""

BLOCK_MS = 1000
"""How long one XREAD waits for new events before the tracker checks the job still exists."""

RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
"""Backoff between reads while Redis is unreachable."""

CLOSE_GRACE_S = 2.0
"""At worker shutdown, how long trackers may take to catch up before they are cancelled."""

RELEASE_GRACE_S = 120.0
"""After its job's supervision ends, how long a tracker may still run (upload the model)."""

FINAL = (JobCompleted, JobFailed, JobCancelled)

DELETE_TAG = DeleteJob.__struct_config__.tag


@dataclass
class _State:
    """How far tracking got; survives the worker so that a retried job resumes cleanly."""

    last_id: str = "0-0"
    mlflow_run_id: str | None = None
    done: bool = False


def _load_state(path: Path) -> _State:
    try:
        raw = json.loads(path.read_text())
        return _State(str(raw["last_id"]), raw.get("mlflow_run_id"), bool(raw.get("done")))
    except (OSError, ValueError, KeyError, TypeError):
        return _State()


def _save_state(path: Path, state: _State) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.__dict__))
    tmp.replace(path)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def delete_tracking(settings: Settings, job_id: str) -> None:
    """Remove a job's TensorBoard files and tracking state (its MLflow run is kept: MLflow is
    the user's own record, outside Heimdall)."""
    shutil.rmtree(tensorboard_dir(settings, job_id), ignore_errors=True)
    state_path(settings, job_id).unlink(missing_ok=True)


class _Tracking:
    """The trackers of one job while its stream is followed."""

    def __init__(self, settings: Settings, client: aredis.Redis, job_id: str) -> None:
        self.settings = settings
        self.client = client
        self.job_id = job_id
        self.emitter = AsyncEmitter(client, settings.job_stream_maxlen)
        self.state_file = state_path(settings, job_id)
        self.state = _load_state(self.state_file)
        self.tensorboard: TensorBoardSink | None = None
        self.mlflow: MlflowSink | None = None
        self.export: StoreExport | None = None
        self._mlflow_warned = False
        self._linked = False

    async def warn(self, message: str) -> None:
        log.warning("tracking warning", message=message)
        await self.emitter.emit(JobWarning(job_id=self.job_id, message=message))

    async def open_tensorboard(self) -> None:
        try:
            path = tensorboard_dir(self.settings, self.job_id)
            self.tensorboard = await asyncio.to_thread(TensorBoardSink, path)
        except Exception as exc:
            await self.warn(f"TensorBoard unavailable: {exc}; the job goes on")

    def open_export(self, store: BlobStore) -> None:
        folder = self.tensorboard.log_dir if self.tensorboard is not None else None
        self.export = StoreExport(store, self.job_id, folder)

    async def _export(self, events: list[Event], *, final: bool = False) -> None:
        export = self.export
        if export is None:
            return
        try:
            await asyncio.to_thread(export.write, events)
            await asyncio.to_thread(export.sync_tensorboard, force=final)
        except HeimdallError as exc:
            self.export = None
            detail = f"object storage unavailable for tracking output: {exc.detail}"
            await self.warn(f"{detail}; the job goes on")

    async def open_mlflow(self, uri: str, timeout_s: float, config: Mapping[str, Any]) -> None:
        self.mlflow = MlflowSink(uri, self.job_id, timeout_s)
        run_id = await self.mlflow.start(config, self.state.mlflow_run_id)
        self.state.mlflow_run_id = run_id or self.state.mlflow_run_id
        await self._check_mlflow()

    async def _check_mlflow(self) -> None:
        if self.mlflow is not None and self.mlflow.failure and not self._mlflow_warned:
            self._mlflow_warned = True
            await self.warn(f"MLflow unavailable: {self.mlflow.failure}; the job goes on")

    async def link(self) -> None:
        """Announce the job's tracking, once per attempt, right after its JobStarted: so the
        link follows the start in the job's log and only started jobs get one."""
        self._linked = True
        run_id = self.mlflow.run_id if self.mlflow is not None else None
        folder = str(self.tensorboard.log_dir) if self.tensorboard is not None else None
        if run_id is not None or folder is not None:
            await self.emitter.emit(
                TrackingLinked(job_id=self.job_id, mlflow_run_id=run_id, tensorboard_dir=folder)
            )

    async def feed(self, events: list[Event], last_id: str) -> None:
        self.state.last_id = last_id
        self.state.done = any(isinstance(e, FINAL) for e in events)
        if self.tensorboard is not None:
            try:
                await asyncio.to_thread(self.tensorboard.write, events)
            except Exception as exc:
                await asyncio.to_thread(self._close_tensorboard)
                await self.warn(f"TensorBoard unavailable: {exc}; the job goes on")
        if self.mlflow is not None:
            await self.mlflow.write(events)
            await self._check_mlflow()
        await self._export(events)
        await asyncio.to_thread(_save_state, self.state_file, self.state)
        if not self._linked and any(isinstance(e, JobStarted) for e in events):
            await self.link()

    async def job_gone(self) -> bool:
        """Whether the job was deleted under us (its stream removed) or its stream vanished
        after we had read from it: no final event will come."""
        stream = keys.job_stream(self.job_id)
        if await self.client.exists(stream):
            return False
        return self.state.last_id != "0-0" or await self.deleted()

    async def deleted(self) -> bool:
        flag = await self.client.get(keys.cancel_flag(self.job_id))
        return flag is not None and _text(flag) == DELETE_TAG

    def _close_tensorboard(self) -> None:
        tensorboard, self.tensorboard = self.tensorboard, None
        if tensorboard is not None:
            tensorboard.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._close_tensorboard)

    async def finish(self) -> None:
        """The job has ended: close the event files and send their last state to the store."""
        await self.close()
        await self._export([], final=True)


async def _follow(tracking: _Tracking) -> None:
    stream = keys.job_stream(tracking.job_id)
    last_id = tracking.state.last_id
    backoff = Backoff(RETRY_MIN_S, RETRY_MAX_S)
    while not tracking.state.done:
        # Training goes on without Redis for a while; so does its tracker.
        reply = await retry(
            functools.partial(
                tracking.client.xread, {stream: last_id}, count=READ_COUNT, block=BLOCK_MS
            ),
            what="tracking: the job's stream",
            transient=(RedisConnectionError, RedisTimeoutError),
            backoff=backoff,
        )
        raise_if_cancelling()
        if not reply:
            if await tracking.job_gone():
                log.info("job stream gone; tracking stops")
                return
            continue
        events: list[Event] = []
        for entry_id, fields in reply[0][1]:
            last_id = _text(entry_id)
            try:
                events.append(decode_event(fields[b"data"]))
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
                log.warning("undecodable event skipped", event_id=last_id)
        await tracking.feed(events, last_id)


async def track_job(
    settings: Settings,
    client: aredis.Redis,
    job_id: str,
    config: Mapping[str, Any],
    *,
    mlflow_uri: str | None,
    tensorboard: bool = True,
    mlflow_timeout_s: float = DEFAULT_MLFLOW_TIMEOUT_S,
    store: BlobStore | None = None,
) -> None:
    """Track one job until its final event: TensorBoard when `tensorboard` is on and the package
    is installed, MLflow when `mlflow_uri` is given, the evaluations and event files copied to
    `store` when one is given (see export.py). Never raises except on cancellation."""
    with structlog.contextvars.bound_contextvars(job_id=job_id):
        try:
            tracking = _Tracking(settings, client, job_id)
        except ValueError:
            log.exception("job not tracked")
            return
        if tracking.state.done:
            log.info("job already tracked to its end")
            return
        try:
            if tensorboard and tensorboard_installed():
                await tracking.open_tensorboard()
            if mlflow_uri:
                await tracking.open_mlflow(mlflow_uri, mlflow_timeout_s, config)
            if store is not None:
                tracking.open_export(store)
            if tracking.tensorboard is None and tracking.mlflow is None and tracking.export is None:
                return
            await _follow(tracking)
            if tracking.state.done and await tracking.deleted():
                await tracking.close()
                await asyncio.to_thread(delete_tracking, settings, job_id)
            elif tracking.state.done:
                await tracking.finish()
        except Exception:
            log.exception("tracking stopped by an error; the job goes on")
        finally:
            await asyncio.shield(tracking.close())


class JobTrackers:
    """The worker's tracking tasks, one per running job; owned by the worker's lifespan."""

    def __init__(
        self,
        settings: Settings,
        client: aredis.Redis,
        tracking: TrackingSettings,
        store: BlobStore | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._tracking = tracking
        self._store = store
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def enabled(self) -> bool:
        return (
            self._store is not None
            or bool(self._tracking.mlflow_uri)
            or (self._tracking.tensorboard and tensorboard_installed())
        )

    def start(self, job_id: str, config: Mapping[str, Any]) -> None:
        """Start tracking a job in the background (no-op when no tracker is enabled)."""
        if not self.enabled or job_id in self._tasks:
            return
        task = asyncio.create_task(
            track_job(
                self._settings,
                self._client,
                job_id,
                config,
                mlflow_uri=self._tracking.mlflow_uri,
                tensorboard=self._tracking.tensorboard,
                mlflow_timeout_s=self._tracking.mlflow_timeout_s,
                store=self._store,
            ),
            name=f"track-{job_id}",
        )
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    def release(self, job_id: str, grace_s: float = RELEASE_GRACE_S) -> None:
        """The job's supervision is over: its tracker normally ends by itself on the final
        event; should none come, it is cancelled after `grace_s`. Does not wait."""
        task = self._tasks.get(job_id)
        if task is not None and not task.done():
            asyncio.get_running_loop().call_later(grace_s, task.cancel)

    async def wait(self, job_id: str) -> None:
        """Wait for a job's tracker to end (tests, orderly shutdown)."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait({task})

    async def aclose(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Give running trackers `grace_s` to catch up with final events already emitted, then
        cancel the rest and wait for them to close their files."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

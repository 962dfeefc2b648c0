"""A job's state from its events: the one reducer (event + state → state).

`effects(event)` says what one event sets, independently of any state: the status it moves the
job to, the columns it gives a value, the progress it reports and a best-epoch candidate.
`apply(state, event, event_id)` folds those effects into a job's state with the rules of
`shared.status` (statuses only move forward; a finished job never changes; every other field
takes the value of the newest event that sets it). An event at or before the state's
`last_event_id` — a redelivered or claimed batch written after a newer one — only raises the
status a rank and fills values still empty, so the order in which a recorder commits batches
cannot move a job backwards.

Every consumer of job state folds with it: the WebSocket push (a plain dict per watched job,
services/api/live_session.py), the recorder's projection into `training_jobs`
(services/recorder/projection.py reads the rows, folds, writes them back; tests compare it
with folding in memory) and `shared/job_state.py`, the state of a job before the recorder has
caught up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from shared.events import (
    BatchProgress,
    CheckpointSaved,
    EpochCompleted,
    Event,
    JobCompleted,
    JobFailed,
    JobPaused,
    JobQueued,
    JobRequeued,
    JobResumed,
    JobStarted,
    TrackingLinked,
    parse_event_id,
    status_of,
)
from shared.status import TERMINAL, JobStatus, can_transition, rank

LiveStatus = dict[str, Any]
"""Keys as in `training_jobs` (`id`, `status`, `current_epoch`, ..., `last_event_id`), plus
`batch_loss`/`batch_accuracy` (the latest training batch's) and `started`."""

COLUMNS: tuple[tuple[str, str], ...] = (
    ("current_epoch", "int4"),
    ("current_batch", "int4"),
    ("total_batches", "int4"),
    ("total_epochs", "int4"),
    ("train_loss", "float8"),
    ("val_loss", "float8"),
    ("train_accuracy", "float8"),
    ("val_accuracy", "float8"),
    ("learning_rate", "float8"),
    ("gradient_norm", "float8"),
    ("best_epoch", "int4"),
    ("best_val_loss", "float8"),
    ("checkpoint_path", "text"),
    ("onnx_model_path", "text"),
    ("error_message", "text"),
    ("dataset_size", "int4"),
    ("train_samples", "int4"),
    ("val_samples", "int4"),
    ("test_samples", "int4"),
    ("monitor", "text"),
    ("best_value", "float8"),
    ("mlflow_run_id", "text"),
    ("celery_task_id", "text"),
)
"""The `training_jobs` columns events set (with their SQL types): each takes the value of the
newest event that sets it."""

LIVE_ONLY = ("batch_loss", "batch_accuracy")
"""Values the live push shows that have no column (the latest training batch's)."""

STATE_KEYS = (
    "id",
    "status",
    *(name for name, _ in COLUMNS),
    "progress_percent",
    "started_at",
    "completed_at",
    *LIVE_ONLY,
    "started",
    "last_event_id",
)

COMPLETE = -1.0
"""`Effects.epochs_done` of a completed job: progress 100 %, whatever the epoch count."""


@dataclass(frozen=True, slots=True)
class Effects:
    """What one event sets, before any state is known."""

    status: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    """Column (or LIVE_ONLY key) → value; an event never sets a value to None."""
    epochs_done: float | None = None
    """Progress in epochs (2.5: half way through epoch 3), or COMPLETE."""
    best_candidate: tuple[int, float] | None = None
    """(epoch, val_loss) of an epoch that names no best epoch: the best when its loss is the
    lowest so far."""


def _epochs(event: EpochCompleted, values: dict[str, Any]) -> tuple[int, float] | None:
    """The best-epoch values of an epoch event; returns a candidate when it names none."""
    if event.best_epoch is not None:
        values["best_epoch"] = event.best_epoch
        if event.best_val_loss is not None:
            values["best_val_loss"] = event.best_val_loss
    elif event.is_best:
        values["best_epoch"] = event.epoch
        if event.val_loss is not None:
            values["best_val_loss"] = event.val_loss
    elif event.val_loss is not None:
        return event.epoch, event.val_loss
    return None


def effects(event: Event) -> Effects:  # noqa: C901 - one case per event type
    """What `event` sets; see `Effects`."""
    values: dict[str, Any] = {}
    epochs_done: float | None = None
    candidate: tuple[int, float] | None = None

    def put(name: str, value: Any) -> None:
        if value is not None:
            values[name] = value

    match event:
        case JobQueued():
            put("total_epochs", event.total_epochs or None)
        case JobStarted():
            put("dataset_size", event.dataset_size or None)
            put("train_samples", event.train_samples or None)
            put("val_samples", event.val_samples or None)
            put("test_samples", event.test_samples)
            put("total_batches", event.total_batches or None)
        case BatchProgress():
            put("current_epoch", event.epoch)
            put("current_batch", event.batch)
            put("total_batches", event.total_batches or None)
            if event.total_batches > 0:
                epochs_done = event.epoch - 1 + min(event.batch / event.total_batches, 1.0)
            if event.points:
                last = event.points[-1]
                put("learning_rate", last.learning_rate)
                put("gradient_norm", last.gradient_norm)
                put("batch_loss", last.loss)
                put("batch_accuracy", last.accuracy)
        case EpochCompleted():
            put("current_epoch", event.epoch)
            put("total_epochs", event.total_epochs or None)
            for name in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
                put(name, getattr(event, name))
            put("learning_rate", event.learning_rate)
            put("gradient_norm", event.gradient_norm)
            put("monitor", event.monitor)
            put("best_value", event.best_value)
            epochs_done = float(event.epoch)
            candidate = _epochs(event, values)
        case CheckpointSaved():
            put("checkpoint_path", event.path)
        case JobCompleted():
            put("best_epoch", event.best_epoch)
            put("best_val_loss", event.best_val_loss)
            put("checkpoint_path", event.checkpoint_path)
            put("onnx_model_path", event.onnx_model_path)
            put("monitor", event.monitor)
            put("best_value", event.best_value)
            epochs_done = COMPLETE
        case JobFailed():
            put("error_message", event.error_message)
        case TrackingLinked():
            put("mlflow_run_id", event.mlflow_run_id)
        case JobPaused():
            # A job paused before it ever started has no checkpoint yet.
            put("checkpoint_path", event.checkpoint_path)
        case JobResumed() | JobRequeued():
            # The queue task that now holds the job (a shutdown re-queue keeps its own).
            put("celery_task_id", event.task_id or None)
    return Effects(status_of(event), values, epochs_done, candidate)


_EPOCH = datetime(1970, 1, 1)


def naive_utc(ts: float) -> datetime:
    """Seconds since the epoch as naive UTC, the form every TIMESTAMP column holds (raises
    OverflowError or ValueError beyond datetime's range)."""
    return _EPOCH + timedelta(seconds=ts)


@lru_cache(maxsize=4096)
def _id_key(event_id: str) -> tuple[int, int] | None:
    # Cached: a live event is folded once per watching client.
    try:
        return parse_event_id(event_id)
    except ValueError:
        return None


def is_late(event_id: str, last_event_id: str | None) -> bool:
    """Whether an event is at or before the newest one a state reflects."""
    if last_event_id is None:
        return False
    new, last = _id_key(event_id), _id_key(last_event_id)
    return new is not None and last is not None and new <= last


def _when(event: Event, event_id: str) -> datetime:
    """The event's time; its id's milliseconds when its own clock is out of range."""
    try:
        return naive_utc(event.ts)
    except (OverflowError, ValueError):
        key = _id_key(event_id)
        return naive_utc(key[0] / 1000 if key else 0.0)


def progress_percent(epochs_done: float, total_epochs: int | None) -> float | None:
    """Progress for `Effects.epochs_done` (None when the total is unknown)."""
    if epochs_done == COMPLETE:
        return 100.0
    if not total_epochs or total_epochs <= 0:
        return None
    return min(100.0, 100.0 * epochs_done / total_epochs)


def from_row(row: Mapping[str, Any]) -> LiveStatus:
    """The state of a job as its database row stands."""
    state: LiveStatus = {key: row.get(key) for key in STATE_KEYS}
    state["id"] = str(row["id"])
    state["started"] = row.get("started_at") is not None or row["status"] != JobStatus.QUEUED
    state["current_epoch"] = state["current_epoch"] or 0
    state["progress_percent"] = state["progress_percent"] or 0.0
    return state


def is_terminal(state: Mapping[str, Any]) -> bool:
    return JobStatus(state["status"]) in TERMINAL


def rewound(state: Mapping[str, Any]) -> LiveStatus:
    """The state to replay older events onto: a finished job counts as still active.

    A client resuming from an event before the job finished must see the statuses it missed
    in order, not `completed` on every replayed epoch; the terminal event itself is part of
    what gets replayed and finishes the job again.
    """
    out = dict(state)
    if is_terminal(out):
        out["status"] = JobStatus.RUNNING.value if out["started"] else JobStatus.QUEUED.value
        out["completed_at"] = None
    return out


def blank(state: Mapping[str, Any]) -> LiveStatus:
    """The job as it stood before its first event (the starting point of a replay)."""
    out: LiveStatus = dict.fromkeys(STATE_KEYS)
    out.update(
        id=state["id"],
        status=JobStatus.QUEUED.value,
        current_epoch=0,
        total_epochs=state["total_epochs"],
        progress_percent=0.0,
        started=False,
    )
    return out


def apply(state: Mapping[str, Any], event: Event, event_id: str) -> LiveStatus:
    """The state after `event` (pure: `state` is not modified).

    A finished job is returned unchanged. An event newer than the state's `last_event_id`
    becomes it and sets what it sets; a late one (see the module's docstring) only moves the
    status up a rank and fills empty values.
    """
    if is_terminal(state):
        return dict(state)
    fx = effects(event)
    out = dict(state)
    late = is_late(event_id, out.get("last_event_id"))
    if not late:
        out["last_event_id"] = event_id
    if fx.status is not None:
        _move(out, fx.status, late, _when(event, event_id))
    if late:
        out.update((k, v) for k, v in fx.values.items() if out.get(k) is None)
    else:
        out.update(fx.values)
        if fx.epochs_done is not None:
            percent = progress_percent(fx.epochs_done, out.get("total_epochs"))
            if percent is not None:
                out["progress_percent"] = percent
    best = out.get("best_val_loss")
    if fx.best_candidate is not None and (best is None or fx.best_candidate[1] < best):
        out["best_epoch"], out["best_val_loss"] = fx.best_candidate
    return out


def _move(out: LiveStatus, status: str, late: bool, at: datetime) -> None:
    """Apply an event's status to `out` (in place) by `shared.status` rules; between statuses
    of one rank (running and paused) only a newer event decides."""
    if status == JobStatus.RUNNING:
        # The first start, whatever order starts arrive in.
        started = out.get("started_at")
        out["started_at"] = at if started is None else min(started, at)
    current = out["status"]
    if not can_transition(current, status):
        return
    if late and rank(status) <= rank(current):
        return
    out["status"] = status
    if status == JobStatus.RUNNING:
        out["started"] = True
    if JobStatus(status) in TERMINAL:
        out["completed_at"] = at

"""A job's live status, kept in memory by applying events: the reducer behind the WebSocket push.

The API reads a job's row once when a client connects and from then on folds the job's events
into a plain dict with the row's keys, so a status push never touches the database. The rules
are the recorder's (see services/recorder/projection.py): statuses only move forward, every
other field takes the value of the newest event that sets it, and a finished job never changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.events import (
    BatchProgress,
    EpochCompleted,
    Event,
    JobCompleted,
    JobFailed,
    JobQueued,
    JobStarted,
    status_of,
)
from shared.status import TERMINAL, JobStatus, can_transition

LiveStatus = dict[str, Any]
"""Keys as in `training_jobs` (`id`, `status`, `current_epoch`, ..., `last_event_id`), plus
`batch_loss`/`batch_accuracy` (the latest training batch's) and `started`."""

STATE_KEYS = (
    "id",
    "status",
    "current_epoch",
    "total_epochs",
    "progress_percent",
    "train_loss",
    "val_loss",
    "train_accuracy",
    "val_accuracy",
    "learning_rate",
    "gradient_norm",
    "error_message",
    "current_batch",
    "total_batches",
    "best_epoch",
    "best_val_loss",
    "batch_loss",
    "batch_accuracy",
    "started",
    "last_event_id",
)


def from_row(row: Mapping[str, Any]) -> LiveStatus:
    """The live status of a job as its database row stands."""
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


def _progress(state: Mapping[str, Any], epochs_done: float) -> float:
    total = state["total_epochs"] or 0
    if total <= 0:
        return float(state["progress_percent"] or 0.0)
    return min(100.0, 100.0 * epochs_done / total)


def apply(  # noqa: C901 - one case per event type
    state: Mapping[str, Any], event: Event, event_id: str
) -> LiveStatus:
    """The status after `event` (pure: `state` is not modified).

    A finished job is returned unchanged; anything else records `event_id` as the newest event
    the status reflects.
    """
    if is_terminal(state):
        return dict(state)
    out = dict(state)
    out["last_event_id"] = event_id
    new = status_of(event)
    if new is not None and can_transition(out["status"], new):
        out["status"] = new
        if new == JobStatus.RUNNING:
            out["started"] = True
    match event:
        case JobQueued():
            out["total_epochs"] = event.total_epochs or out["total_epochs"]
        case JobStarted():
            out["total_batches"] = event.total_batches or out["total_batches"]
        case BatchProgress():
            out["current_epoch"] = event.epoch
            out["current_batch"] = event.batch
            out["total_batches"] = event.total_batches or out["total_batches"]
            if event.total_batches > 0:
                fraction = min(event.batch / event.total_batches, 1.0)
                out["progress_percent"] = _progress(out, event.epoch - 1 + fraction)
            if event.points:
                last = event.points[-1]
                out["batch_loss"] = last.loss
                out["batch_accuracy"] = last.accuracy
                out["learning_rate"] = last.learning_rate
                if last.gradient_norm is not None:
                    out["gradient_norm"] = last.gradient_norm
        case EpochCompleted():
            out["current_epoch"] = event.epoch
            out["total_epochs"] = event.total_epochs or out["total_epochs"]
            for name in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
                value = getattr(event, name)
                if value is not None:
                    out[name] = value
            out["learning_rate"] = event.learning_rate
            if event.gradient_norm is not None:
                out["gradient_norm"] = event.gradient_norm
            out["progress_percent"] = _progress(out, event.epoch)
            if event.best_epoch is not None:
                out["best_epoch"], out["best_val_loss"] = event.best_epoch, event.best_val_loss
            elif event.is_best:
                out["best_epoch"], out["best_val_loss"] = event.epoch, event.val_loss
        case JobCompleted():
            out["progress_percent"] = 100.0
            if event.best_epoch is not None:
                out["best_epoch"], out["best_val_loss"] = event.best_epoch, event.best_val_loss
        case JobFailed():
            out["error_message"] = event.error_message
    return out

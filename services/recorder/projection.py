"""The job projection: folding a batch's events into one forward-only update per job.

Within a batch, a job's events are folded in stream order into a `JobDelta`: the status the
batch moves the job to (by `shared.status` rules, so the first terminal status wins and nothing
after it counts), and, for every other column, the latest value and the id of the event that
set it. The UPDATE then applies each value only when that event is newer than the job's
`last_event_id` (or the column is still empty), so batches committed out of order — a claimed
batch of a dead consumer, two recorders sharing the stream — never move a job backwards, and a
terminal job is never touched again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.events import (
    BatchProgress,
    CheckpointSaved,
    EpochCompleted,
    JobCompleted,
    JobFailed,
    JobPaused,
    JobRequeued,
    JobResumed,
    JobStarted,
    TrackingLinked,
    status_of,
)
from shared.status import TERMINAL, JobStatus, can_transition, sql_rank_case

from .entries import Entry

ID_SCALE = 10_000_000_000
"""An event id `<ms>-<seq>` as one number, `ms * ID_SCALE + seq`, for ordering in SQL."""

LATEST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("current_epoch", "int4"),
    ("current_batch", "int4"),
    ("total_batches", "int4"),
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
    ("mlflow_run_id", "text"),
    ("celery_task_id", "text"),
)
"""Columns that take the value of the newest event that sets them."""


def id_number(id_ms: int, id_seq: int) -> int:
    return id_ms * ID_SCALE + id_seq


@dataclass
class JobDelta:
    """What one batch changes on one job."""

    job_id: uuid.UUID
    status: str | None = None
    started_at: datetime | None = None
    """Time of the batch's first event that means `running`."""
    completed_at: datetime | None = None
    """Time of the terminal event, when the batch has one."""
    latest: dict[str, tuple[Any, int]] = field(default_factory=dict)
    """column → (value, id number of the event that set it)."""
    progress: tuple[float, int] | None = None
    """(completed epochs as a fraction, id number); -1 means the job completed."""
    best_min: tuple[int, float] | None = None
    """(epoch, val_loss) of the batch's lowest validation loss, for events that name no best."""
    last_event_id: str | None = None
    last_number: int = -1
    status_number: int | None = None
    """Id number of the event that set `status`: between statuses of equal rank (running and
    paused) the newer event wins."""

    @property
    def terminal(self) -> bool:
        return self.status is not None and JobStatus(self.status) in TERMINAL

    def apply(self, entry: Entry) -> None:  # noqa: C901 - one case per event type
        """Fold one event (entries must come in stream order); events after a terminal one
        are ignored, as are their effects on the job."""
        event = entry.event
        if event is None or self.terminal:
            return
        number = id_number(entry.id_ms, entry.id_seq)
        new = status_of(event)
        if new is not None:
            if self.status is None or can_transition(self.status, new):
                self.status, self.status_number = new, number
            if new == JobStatus.RUNNING and self.started_at is None:
                self.started_at = entry.timestamp
            if JobStatus(new) in TERMINAL:
                self.completed_at = entry.timestamp
        self.last_event_id, self.last_number = entry.event_id, number

        def put(column: str, value: Any) -> None:
            if value is not None:
                self.latest[column] = (value, number)

        match event:
            case JobStarted():
                put("dataset_size", event.dataset_size or None)
                put("train_samples", event.train_samples or None)
                put("val_samples", event.val_samples or None)
                put("total_batches", event.total_batches or None)
            case BatchProgress():
                put("current_epoch", event.epoch)
                put("current_batch", event.batch)
                put("total_batches", event.total_batches or None)
                if event.total_batches > 0:
                    fraction = min(event.batch / event.total_batches, 1.0)
                    self.progress = (event.epoch - 1 + fraction, number)
                if event.points:
                    last = event.points[-1]
                    put("learning_rate", last.learning_rate)
                    put("gradient_norm", last.gradient_norm)
            case EpochCompleted():
                put("current_epoch", event.epoch)
                put("train_loss", event.train_loss)
                put("val_loss", event.val_loss)
                put("train_accuracy", event.train_accuracy)
                put("val_accuracy", event.val_accuracy)
                put("learning_rate", event.learning_rate)
                put("gradient_norm", event.gradient_norm)
                self.progress = (float(event.epoch), number)
                if event.best_epoch is not None:
                    put("best_epoch", event.best_epoch)
                    put("best_val_loss", event.best_val_loss)
                elif event.is_best:
                    put("best_epoch", event.epoch)
                    put("best_val_loss", event.val_loss)
                elif event.val_loss is not None and (
                    self.best_min is None or event.val_loss < self.best_min[1]
                ):
                    self.best_min = (event.epoch, event.val_loss)
            case CheckpointSaved():
                put("checkpoint_path", event.path)
            case JobCompleted():
                put("best_epoch", event.best_epoch)
                put("best_val_loss", event.best_val_loss)
                put("checkpoint_path", event.checkpoint_path)
                put("onnx_model_path", event.onnx_model_path)
                self.progress = (-1.0, number)
            case JobFailed():
                put("error_message", event.error_message)
            case TrackingLinked():
                put("mlflow_run_id", event.mlflow_run_id)
            case JobPaused():
                # A job paused before it ever started has no checkpoint and no epoch yet.
                put("checkpoint_path", event.checkpoint_path)
            case JobResumed() | JobRequeued():
                # The queue task that now holds the job (a shutdown re-queue keeps its own).
                put("celery_task_id", event.task_id or None)

    def params(self) -> tuple[Any, ...]:
        """Arguments of `UPDATE_SQL`, in order."""
        values: list[Any] = [self.job_id, self.status, self.started_at, self.completed_at]
        for column, _ in LATEST_COLUMNS:
            value, number = self.latest.get(column, (None, None))
            values += [value, number]
        progress, progress_number = self.progress or (None, None)
        best_epoch, best_loss = self.best_min or (None, None)
        values += [progress, progress_number, best_epoch, best_loss]
        values += [self.last_event_id, self.last_number if self.last_event_id else None]
        values.append(self.status_number)
        return tuple(values)


def fold(entries: list[Entry]) -> list[JobDelta]:
    """One delta per job, in job-id order (a fixed lock order between concurrent recorders)."""
    deltas: dict[uuid.UUID, JobDelta] = {}
    for entry in sorted(entries, key=lambda e: e.key):
        if entry.job_id is None or entry.event is None:
            continue
        delta = deltas.get(entry.job_id)
        if delta is None:
            delta = deltas[entry.job_id] = JobDelta(entry.job_id)
        delta.apply(entry)
    return [deltas[k] for k in sorted(deltas)]


def _update_sql() -> str:
    last = (
        "(CASE WHEN j.last_event_id !~ '^[0-9]+-[0-9]+$' OR j.last_event_id IS NULL"
        " THEN -1::numeric ELSE"
        f" split_part(j.last_event_id, '-', 1)::numeric * {ID_SCALE}"
        " + split_part(j.last_event_id, '-', 2)::numeric END)"
    )
    terminal = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL))
    new_rank, old_rank = sql_rank_case("$2::text"), sql_rank_case("j.status")
    status_number = f"${5 + 2 * len(LATEST_COLUMNS) + 6}::numeric"
    sets = [
        f"status = CASE WHEN $2::text IS NOT NULL AND ({new_rank} > {old_rank}"
        f" OR ({new_rank} = {old_rank} AND {status_number} > {last}))"
        " THEN $2::text ELSE j.status END",
        "started_at = LEAST(j.started_at, $3::timestamp)",  # LEAST skips NULLs
        f"completed_at = CASE WHEN $2::text IN ({terminal}) THEN $4::timestamp"
        " ELSE j.completed_at END",
    ]
    latest: dict[str, str] = {}
    numbers: dict[str, str] = {}
    n = 5
    for column, type_ in LATEST_COLUMNS:
        value, number = f"${n}::{type_}", f"${n + 1}::numeric"
        numbers[column] = number
        latest[column] = (
            f"CASE WHEN {number} IS NOT NULL AND ({number} > {last}"
            f" OR j.{column} IS NULL) THEN {value} ELSE j.{column} END"
        )
        n += 2
    progress, p_number, best_epoch, best_loss, last_id, last_number = (
        f"${n + i}" for i in range(6)
    )
    # A best epoch derived from the lowest validation loss is order-independent; it only counts
    # when the batch itself named no best epoch.
    derived = (
        f"{numbers['best_epoch']} IS NULL AND {best_loss}::float8 IS NOT NULL"
        f" AND {best_loss}::float8 < COALESCE(j.best_val_loss, 'Infinity'::float8)"
    )
    latest["best_epoch"] = (
        f"CASE WHEN {derived} THEN {best_epoch}::int4 ELSE {latest['best_epoch']} END"
    )
    latest["best_val_loss"] = (
        f"CASE WHEN {derived} THEN {best_loss}::float8 ELSE {latest['best_val_loss']} END"
    )
    sets += [f"{column} = {expression}" for column, expression in latest.items()]
    sets.append(
        f"progress_percent = CASE WHEN {p_number}::numeric IS NULL"
        f" OR {p_number}::numeric <= {last} THEN j.progress_percent"
        f" WHEN {progress}::float8 < 0 THEN 100.0"
        f" ELSE LEAST(100.0, 100.0 * {progress}::float8 / NULLIF(j.total_epochs, 0)) END"
    )
    sets.append(
        f"last_event_id = CASE WHEN {last_number}::numeric IS NOT NULL"
        f" AND {last_number}::numeric > {last} THEN {last_id}::text ELSE j.last_event_id END"
    )
    sets.append("updated_at = (now() AT TIME ZONE 'utc')")
    return (
        "UPDATE training_jobs AS j SET\n    "
        + ",\n    ".join(sets)
        + f"\nWHERE j.id = $1::uuid AND j.status NOT IN ({terminal})"
    )


UPDATE_SQL = _update_sql()
"""Applies one `JobDelta` (see `JobDelta.params`); does nothing to a terminal job."""

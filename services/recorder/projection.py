"""The job projection: folding a batch's events into one forward-only update per job.

What each event sets comes from the one reducer, `shared.live_state.effects`. Within a batch, a
job's events are folded in stream order into a `JobDelta`: the status the batch moves the job
to (by `shared.status` rules, so the first terminal status wins and nothing after it counts),
and, for every other column, the latest value and the id of the event that set it. The UPDATE
then applies each value only when that event is newer than the job's `last_event_id` (or the
column is still empty), so batches committed out of order — a claimed batch of a dead consumer,
two recorders sharing the stream — never move a job backwards, and a terminal job is never
touched again: a later terminal event (in this batch or any later one) cannot replace an
earlier one. tests/test_projection_reducer.py checks the SQL against `live_state.apply`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.live_state import COLUMNS, COMPLETE, effects
from shared.status import TERMINAL, JobStatus, can_transition, sql_rank_case

from .entries import Entry

ID_SCALE = 10_000_000_000
"""An event id `<ms>-<seq>` as one number, `ms * ID_SCALE + seq`, for ordering in SQL."""

LATEST_COLUMNS = COLUMNS
"""Columns that take the value of the newest event that sets them (the reducer's table)."""

_PROJECTED = frozenset(name for name, _ in COLUMNS)


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
    """(completed epochs as a fraction, id number); `COMPLETE` means the job completed."""
    best_min: tuple[int, float] | None = None
    """(epoch, val_loss): the lowest validation loss of the epochs that name no best epoch,
    after the batch's last one that does."""
    last_event_id: str | None = None
    last_number: int = -1
    status_number: int | None = None
    """Id number of the event that set `status`: between statuses of equal rank (running and
    paused) the newer event wins."""

    @property
    def terminal(self) -> bool:
        return self.status is not None and JobStatus(self.status) in TERMINAL

    def apply(self, entry: Entry) -> None:
        """Fold one event (entries must come in stream order); events after a terminal one
        are ignored, as are their effects on the job."""
        event = entry.event
        if event is None or self.terminal:
            return
        number = id_number(entry.id_ms, entry.id_seq)
        fx = effects(event)
        if fx.status is not None:
            self._status(fx.status, number, entry.timestamp)
        self.last_event_id, self.last_number = entry.event_id, number
        for column, value in fx.values.items():
            if column in _PROJECTED:
                self.latest[column] = (value, number)
        if "best_epoch" in fx.values:
            self.best_min = None  # a named best epoch replaces any candidate before it
        if fx.epochs_done is not None:
            self.progress = (fx.epochs_done, number)
        candidate = fx.best_candidate
        if candidate is not None and (self.best_min is None or candidate[1] < self.best_min[1]):
            self.best_min = candidate

    def _status(self, new: str, number: int, at: datetime) -> None:
        if self.status is None or can_transition(self.status, new):
            self.status, self.status_number = new, number
        if new == JobStatus.RUNNING and self.started_at is None:
            self.started_at = at
        if JobStatus(new) in TERMINAL:
            self.completed_at = at

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
    n = 5
    for column, type_ in LATEST_COLUMNS:
        value, number = f"${n}::{type_}", f"${n + 1}::numeric"
        latest[column] = (
            f"CASE WHEN {number} IS NOT NULL AND ({number} > {last}"
            f" OR j.{column} IS NULL) THEN {value} ELSE j.{column} END"
        )
        n += 2
    progress, p_number, best_epoch, best_loss, last_id, last_number = (
        f"${n + i}" for i in range(6)
    )
    # A best epoch derived from the lowest validation loss counts when it is lower than the
    # best the batch named (or the row had), as `live_state.apply` does event by event.
    derived = (
        f"{best_loss}::float8 IS NOT NULL AND {best_loss}::float8"
        f" < COALESCE({latest['best_val_loss']}, 'Infinity'::float8)"
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
        f" WHEN {progress}::float8 = {COMPLETE} THEN 100.0"
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

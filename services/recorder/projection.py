"""The job projection: `training_jobs` as the one reducer (`shared.live_state.apply`) folds it.

Per batch, the rows of the jobs it names are read `FOR NO KEY UPDATE` (the lock an UPDATE takes;
it does not wait for the key-share locks of the batch's event inserts) in job-id order (a fixed
lock order between concurrent recorders), each job's new events are folded into its row's state in
stream order, and the rows that changed are written back, in the same transaction as the
events. The rules are the reducer's alone: statuses only move forward, a terminal job is never
touched again, and an event at or before a row's `last_event_id` (a claimed batch of a dead
consumer, two recorders sharing the stream) only raises the status and fills empty columns. No
SQL here knows what an event means; tests/test_projection_reducer.py folds random event
sequences through the database and in memory and compares.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg

from shared import live_state

from .entries import Entry

WRITTEN = (
    "status",
    "started_at",
    "completed_at",
    *(name for name, _ in live_state.COLUMNS),
    "progress_percent",
    "last_event_id",
)
"""The `training_jobs` columns the projection owns: nobody else writes them after the insert."""

SELECT_SQL = (
    f"SELECT id, {', '.join(WRITTEN)} FROM training_jobs"
    " WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE"
)

UPDATE_SQL = (
    "UPDATE training_jobs SET "
    + ", ".join(f"{column} = ${n}" for n, column in enumerate(WRITTEN, start=2))
    + ", updated_at = (now() AT TIME ZONE 'utc') WHERE id = $1"
)


def by_job(entries: Iterable[Entry]) -> dict[uuid.UUID, list[Entry]]:
    """Each job's decoded events, in stream order."""
    out: dict[uuid.UUID, list[Entry]] = {}
    for entry in sorted(entries, key=lambda e: e.key):
        if entry.job_id is not None and entry.event is not None:
            out.setdefault(entry.job_id, []).append(entry)
    return out


def fold(row: asyncpg.Record | dict[str, Any], entries: list[Entry]) -> live_state.LiveStatus:
    """The row's state with `entries` applied."""
    state = live_state.from_row(row)
    for entry in entries:
        assert entry.event is not None
        state = live_state.apply(state, entry.event, entry.event_id)
    return state


async def project(conn: asyncpg.Connection, entries: Iterable[Entry]) -> int:
    """Fold `entries` into their jobs' rows (inside the caller's transaction); returns how many
    rows changed. Events of jobs without a row (deleted) are ignored."""
    events = by_job(entries)
    if not events:
        return 0
    updates = []
    for row in await conn.fetch(SELECT_SQL, sorted(events)):
        before = {column: row[column] for column in WRITTEN}
        state = fold(row, events[row["id"]])
        after = {column: state.get(column) for column in WRITTEN}
        if after != before:
            updates.append((row["id"], *after.values()))
    if updates:
        await conn.executemany(UPDATE_SQL, updates)
    return len(updates)

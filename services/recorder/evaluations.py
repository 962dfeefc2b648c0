"""Per-class evaluations (EvaluationCompleted) into `training_evaluations`, one row per (job,
phase, epoch).

Written in the batch's transaction, after its events: a repeated evaluation (a worker that
re-ran a job's end after a crash emits the test evaluation again under a new event id) finds
its key taken and is left out, and so are its metric rows (the phase 'test' row), so a job
never has two test results.
"""

from __future__ import annotations

import asyncpg
import msgspec

from shared.events import EvaluationCompleted

from .entries import Entry

INSERT_SQL = """
INSERT INTO training_evaluations
    (training_job_id, phase, epoch, event_id, timestamp, classes, confusion_matrix, per_class,
     accuracy_by_snr, accuracy, macro_f1, loss, samples)
SELECT s.job, s.phase, s.epoch, s.event_id, s.ts, s.classes::jsonb, s.matrix::jsonb,
       s.per_class::jsonb, s.bands::jsonb, s.accuracy, s.macro_f1, s.loss, s.samples
FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::timestamp[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::float8[], $11::float8[], $12::float8[],
            $13::int4[])
     AS s(job, phase, epoch, event_id, ts, classes, matrix, per_class, bands, accuracy,
          macro_f1, loss, samples)
ON CONFLICT (training_job_id, phase, epoch) DO NOTHING
RETURNING event_id
"""

_json = msgspec.json.encode


async def record(conn: asyncpg.Connection, entries: list[Entry]) -> set[str]:
    """Insert the evaluations among `entries` (newly stored events); returns the event ids of
    those that were repeats and wrote nothing."""
    evals = [(e, e.event) for e in entries if isinstance(e.event, EvaluationCompleted)]
    if not evals:
        return set()
    columns: list[list[object]] = [[] for _ in range(13)]
    for entry, ev in evals:
        assert isinstance(ev, EvaluationCompleted)
        values = (
            entry.job_id,
            ev.phase[:10],
            ev.epoch,
            entry.event_id,
            entry.timestamp,
            _json(ev.classes).decode(),
            _json(ev.confusion_matrix).decode(),
            _json(ev.per_class).decode(),
            _json(ev.accuracy_by_snr).decode(),
            ev.accuracy,
            ev.macro_f1,
            ev.loss,
            ev.samples,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    inserted = {r[0] for r in await conn.fetch(INSERT_SQL, *columns)}
    return {entry.event_id for entry, _ in evals} - inserted

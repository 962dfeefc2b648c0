"""A job's state now, before the recorder has caught up: the one place that answers it.

Only the recorder writes job status (it projects events into `training_jobs`), so a row lags
the events by up to a batch. Whoever must act on the newest state — the API answering a
cancel, pause or resume, a GET right after one, a worker deciding whether a job it was handed
may still run — takes the row, folds the job's events that came after the row's
`last_event_id` (from the job's Redis stream) with the one reducer (`live_state.apply`), and
trusts the final-state claim (`keys.final`) over both: it is decided before any terminal
event exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import redis.asyncio as aredis
import structlog
from redis.exceptions import RedisError

from shared import keys, live_state
from shared.emit import final_status
from shared.events import BatchProgress, decode_event
from shared.status import TERMINAL, JobStatus

log = structlog.get_logger(__name__)

PAGE = 1000


async def catch_up(
    client: aredis.Redis, state: Mapping[str, Any], job_id: str
) -> live_state.LiveStatus:
    """`state` (a row's) with every event of the job's stream after its `last_event_id`
    folded in, and the final claim applied."""
    out = dict(state)
    cursor = out.get("last_event_id")
    while True:
        start = f"({cursor}" if cursor else "-"
        entries = await client.xrange(keys.job_stream(job_id), min=start, count=PAGE)
        for raw_id, fields in entries:
            cursor = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            try:
                event = decode_event(fields[b"data"])
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
                continue  # a newer schema: not ours to judge
            out = live_state.apply(out, event, cursor)
        if len(entries) < PAGE:
            break
    final = await final_status(client, job_id)
    if final is not None and final in TERMINAL and not live_state.is_terminal(out):
        # The claim is made before the terminal event is written: trust it.
        out["status"] = JobStatus(final).value
    return out


async def current(
    client: aredis.Redis, row: Mapping[str, Any], *, strict: bool = False
) -> dict[str, Any]:
    """The row with the state it will have once the recorder has caught up.

    With `strict=False` a Redis outage leaves the row as it is (a read may lag); with
    `strict=True` it raises (a decision must not be taken on a stale state).
    """
    job_id = str(row["id"])
    try:
        state = await catch_up(client, live_state.from_row(row), job_id)
    except (RedisError, OSError) as exc:
        if strict:
            raise
        log.warning("job state from the row only: redis unavailable", job_id=job_id, error=str(exc))
        return dict(row)
    merged = dict(row)
    merged.update((key, value) for key, value in state.items() if key in row)
    merged["id"] = row["id"]
    return merged


LOOKBACK = 200
"""How many of a job's events before its row's newest are searched for its latest batch."""


async def with_last_batch(
    client: aredis.Redis, state: Mapping[str, Any], job_id: str
) -> live_state.LiveStatus:
    """`state` (a row's) with the values that have no column (`live_state.LIVE_ONLY`: the
    latest batch's loss and accuracy) taken from the newest batch event it reflects, so that
    every field of a snapshot comes from the same events (`current_batch` 2 with batch 2's
    loss, never with none)."""
    out = dict(state)
    newest = out.get("last_event_id")
    if not newest or out.get("current_batch") is None:
        return out
    entries = await client.xrevrange(keys.job_stream(job_id), max=newest, count=LOOKBACK)
    for _id, fields in entries:
        try:
            event = decode_event(fields[b"data"])
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
            continue
        if isinstance(event, BatchProgress) and event.points:
            values = live_state.effects(event).values
            out.update((k, values[k]) for k in live_state.LIVE_ONLY if k in values)
            break
    return out

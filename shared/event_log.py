"""A job's event log, read in order from where a client left off.

The job's Redis stream holds the newest window of events exactly as emitted; the database
holds everything the recorder has committed. Events older than the window come from the
database, the rest from the stream, so a reader sees no gap even while the recorder lags.
Used by the API (`GET .../events`, the WebSocket's backlog) and by `heimdall replay`.
"""

from __future__ import annotations

import uuid

import asyncpg
import msgspec
import redis.asyncio as aredis

from shared import keys
from shared.events import EVENT_ID_PART_MAX, parse_event_id

_MS_MAX = 2**63 - 1
_SEQ_MAX = 2**31 - 1
"""The database keeps an id as (BIGINT, INTEGER); events are stamped in milliseconds with small
sequences, so a stored id never exceeds these, while a cursor may be any Redis id."""


class StoredEvent(msgspec.Struct):
    """One event as logged: its stream id and its JSON exactly as emitted."""

    event_id: str
    event: msgspec.Raw


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _db_cursor(after: tuple[int, int]) -> tuple[int, int] | None:
    """`after` in the database's column ranges, the same rows following it; None: no row can."""
    ms, seq = after
    if ms > _MS_MAX:
        return None
    return ms, min(seq, _SEQ_MAX)


async def events_after(
    pool: asyncpg.Pool,
    client: aredis.Redis,
    job_id: str,
    after: str | None,
    limit: int,
) -> list[StoredEvent]:
    """A job's events after the id `after` (None: from the start), in order, at most `limit`.

    Raises `InvalidInput` for an `after` that is not an event id (see `parse_event_id`).
    """
    after_key = parse_event_id(after) if after else (-1, 0)
    if after_key == (EVENT_ID_PART_MAX, EVENT_ID_PART_MAX):
        return []  # the largest id there is: nothing follows it
    stream = keys.job_stream(job_id)
    oldest = await client.xrange(stream, count=1)
    window_start = parse_event_id(_text(oldest[0][0])) if oldest else None
    out: list[StoredEvent] = []
    cursor = _db_cursor(after_key)
    if cursor is not None and (window_start is None or after_key < window_start):
        upper = _db_cursor(window_start) if window_start else None
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT event_id, payload::text AS payload FROM training_events"
                " WHERE training_job_id = $1 AND (id_ms, id_seq) > ($2, $3)"
                " AND (id_ms, id_seq) < ($4, $5) ORDER BY id_ms, id_seq LIMIT $6",
                uuid.UUID(job_id),
                *cursor,
                *(upper or (_MS_MAX, _SEQ_MAX)),
                limit,
            )
        out = [StoredEvent(r["event_id"], msgspec.Raw(r["payload"].encode())) for r in rows]
    if window_start is not None and len(out) < limit:
        start = f"({after_key[0]}-{after_key[1]}" if after and after_key >= window_start else "-"
        for entry_id, fields in await client.xrange(stream, min=start, count=limit - len(out)):
            out.append(StoredEvent(_text(entry_id), msgspec.Raw(fields[b"data"])))
    return out

"""Emitting an event: the global stream, the job's stream and the job's channel in one round trip.

A Lua script appends the event to the global stream (which gives it its id), appends it under
the same id to the job's bounded stream, and publishes `<id> <json>` on the job's channel. The
three stay consistent because the script runs atomically on the server.

The global stream is never trimmed here: only the recorder trims it, below what it has
persisted. The job stream keeps roughly `job_stream_maxlen` entries.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aredis

from shared import keys
from shared.events import Event, encode_event

EMIT_SCRIPT = """
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[1], 'data', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id, 'data', ARGV[2])
redis.call('PUBLISH', KEYS[3], id .. ' ' .. ARGV[2])
return id
"""


def _args(event: Event, maxlen: int) -> tuple[list[str], list[Any]]:
    job_id = event.job_id
    return (
        [keys.EVENTS_STREAM, keys.job_stream(job_id), keys.job_channel(job_id)],
        [job_id, encode_event(event), maxlen],
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AsyncEmitter:
    """Emits events from async code (API, tests)."""

    def __init__(self, client: aredis.Redis, job_stream_maxlen: int = 10_000) -> None:
        self._script = client.register_script(EMIT_SCRIPT)
        self._maxlen = job_stream_maxlen

    async def emit(self, event: Event) -> str:
        """Emit one event and return its id."""
        key_list, argv = _args(event, self._maxlen)
        return _text(await self._script(keys=key_list, args=argv))


class SyncEmitter:
    """Emits events from the training process, which has no event loop."""

    def __init__(self, client: redis.Redis, job_stream_maxlen: int = 10_000) -> None:
        self._script = client.register_script(EMIT_SCRIPT)
        self._maxlen = job_stream_maxlen

    def emit(self, event: Event) -> str:
        key_list, argv = _args(event, self._maxlen)
        return _text(self._script(keys=key_list, args=argv))


def split_live_message(data: bytes | str) -> tuple[str, bytes]:
    """A pub/sub payload `<id> <json>` → `(id, json)`."""
    raw = data.encode() if isinstance(data, str) else data
    event_id, _, payload = raw.partition(b" ")
    return event_id.decode(), payload

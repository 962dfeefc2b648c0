"""Emitting an event: the global stream, the job's stream and the job's channel in one round trip,
and the one place that decides a job's final state.

A Lua script appends the event to the global stream (which gives it its id), appends it under
the same id to the job's bounded stream, and publishes `<id> <json>` on the job's channel. The
three stay consistent because the script runs atomically on the server.

The same script is the arbiter of the final state. A terminal event (completed, failed,
cancelled) first claims `keys.final(job)` with SET NX; when another terminal event claimed it
first, nothing is emitted and the winner's status is returned. The worker's gate, the API's
cancel and the reaper's failure all emit through here, so a job has exactly one terminal event,
and a cancel that races a completion either wins (and the completion is never emitted) or gets
told the job is already completed. Events of a deleted job (`keys.DELETED_JOBS`) are dropped,
so a straggler cannot recreate its stream.

A retry after a timeout (the first attempt may have run late, after a stall) first looks for
the same payload among the job stream's newest entries, so it never emits an event twice.

The global stream is never trimmed here: only the recorder trims it, below what it has
persisted. The job stream keeps roughly `job_stream_maxlen` entries.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

import redis
import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.events import Event, encode_event, status_of
from shared.status import TERMINAL, JobStatus

DELETED = "deleted"
"""What `Emitted.final` says for an event of a deleted job."""

EMIT_SCRIPT = """
if redis.call('ZSCORE', KEYS[5], ARGV[1]) then
  return {false, 'deleted'}
end
if ARGV[5] == '1' then
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 4)) do
    if entry[2][2] == ARGV[2] then
      return {entry[1], redis.call('GET', KEYS[4]) or ''}
    end
  end
end
if ARGV[4] ~= '' and not redis.call('SET', KEYS[4], ARGV[4], 'NX') then
  return {false, redis.call('GET', KEYS[4])}
end
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[1], 'data', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id, 'data', ARGV[2])
redis.call('PUBLISH', KEYS[3], id .. ' ' .. ARGV[2])
return {id, ARGV[4]}
"""

RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""Failures after which an emit may be tried again (the store restarting or stalled)."""


class Emitted(NamedTuple):
    """What became of one event."""

    event_id: str | None
    """Its id; None when it was not emitted (a terminal event after the job's final one, or
    any event of a deleted job)."""
    final: str
    """For a terminal event: the job's final status (its own when it won, the earlier one's
    when it lost, `deleted`); empty for other events unless the job was deleted."""

    @property
    def won(self) -> bool:
        return self.event_id is not None


def _args(event: Event, maxlen: int, retry: bool) -> tuple[list[str], list[Any]]:
    job_id = event.job_id
    status = status_of(event)
    terminal = status if status is not None and JobStatus(status) in TERMINAL else ""
    return (
        [
            keys.EVENTS_STREAM,
            keys.job_stream(job_id),
            keys.job_channel(job_id),
            keys.final(job_id),
            keys.DELETED_JOBS,
        ],
        [job_id, encode_event(event), maxlen, terminal, "1" if retry else "0"],
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _result(reply: Any) -> Emitted:
    event_id, final = [*list(reply), None, None][:2]
    return Emitted(None if event_id is None else _text(event_id), _text(final or ""))


def _backoff(attempt: int) -> float:
    return float(min(2.0, 0.1 * 2**attempt))


class AsyncEmitter:
    """Emits events from async code (API, worker, reaper, tests).

    `retry_s`: how long to keep trying while Redis is unreachable (0: fail at once, which is
    what a request handler wants: its caller gets a 503 and may retry).
    """

    def __init__(
        self, client: aredis.Redis, job_stream_maxlen: int = 10_000, retry_s: float = 0.0
    ) -> None:
        self._script = client.register_script(EMIT_SCRIPT)
        self._maxlen = job_stream_maxlen
        self._retry_s = retry_s

    async def send(self, event: Event) -> Emitted:
        """Emit one event (a terminal one only if it is the job's first)."""
        deadline = time.monotonic() + self._retry_s
        attempt = 0
        while True:
            key_list, argv = _args(event, self._maxlen, retry=attempt > 0)
            try:
                return _result(await self._script(keys=key_list, args=argv))
            except RETRYABLE:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(_backoff(attempt))
            attempt += 1

    async def emit(self, event: Event) -> str | None:
        """Emit one event and return its id (None when it was not emitted, see `send`)."""
        return (await self.send(event)).event_id


class SyncEmitter:
    """Emits events from the training process, which has no event loop.

    It outlasts a Redis restart or stall of up to `retry_s` (rather than failing the job):
    every batch waits for its progress event to be stored, so none is lost or doubled.
    """

    def __init__(
        self, client: redis.Redis, job_stream_maxlen: int = 10_000, retry_s: float = 300.0
    ) -> None:
        self._script = client.register_script(EMIT_SCRIPT)
        self._maxlen = job_stream_maxlen
        self._retry_s = retry_s

    def send(self, event: Event) -> Emitted:
        deadline = time.monotonic() + self._retry_s
        attempt = 0
        while True:
            key_list, argv = _args(event, self._maxlen, retry=attempt > 0)
            try:
                return _result(self._script(keys=key_list, args=argv))
            except RETRYABLE:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(_backoff(attempt))
            attempt += 1

    def emit(self, event: Event) -> str | None:
        return self.send(event).event_id


async def final_status(client: aredis.Redis, job_id: str) -> str | None:
    """The job's final status as claimed (None while it has not ended)."""
    value = await client.get(keys.final(job_id))
    return None if value is None else _text(value)


def split_live_message(data: bytes | str) -> tuple[str, bytes]:
    """A pub/sub payload `<id> <json>` → `(id, json)`."""
    raw = data.encode() if isinstance(data, str) else data
    event_id, _, payload = raw.partition(b" ")
    return event_id.decode(), payload

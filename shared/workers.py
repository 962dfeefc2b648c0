"""Workers' heartbeat records in Redis: written by each worker, read by the API and the CLI.

A record is a key with a TTL (see `keys.worker`), so a worker that dies without a word
disappears once its TTL runs out; the `keys.WORKERS` index lets readers find the records
without scanning the keyspace.
"""

from __future__ import annotations

import time

import msgspec
import redis.asyncio as aredis
import structlog

from shared import keys
from shared.capabilities import WorkerInfo, decode_info, encode_info

log = structlog.get_logger(__name__)


async def announce(client: aredis.Redis, info: WorkerInfo, ttl_s: float) -> None:
    """Write (or refresh) the worker's record, to expire in `ttl_s` unless refreshed."""
    ttl_ms = max(1, int(ttl_s * 1000))
    async with client.pipeline(transaction=True) as pipe:
        pipe.set(keys.worker(info.id), encode_info(info), px=ttl_ms)
        pipe.zadd(keys.WORKERS, {info.id: time.time() * 1000 + ttl_ms})
        await pipe.execute()


async def withdraw(client: aredis.Redis, worker_id: str) -> None:
    """Remove the worker's record at once (a clean shutdown)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.worker(worker_id))
        pipe.zrem(keys.WORKERS, worker_id)
        await pipe.execute()


async def connected(client: aredis.Redis) -> list[WorkerInfo]:
    """Every worker whose record has not expired, ordered by id."""
    await client.zremrangebyscore(keys.WORKERS, "-inf", time.time() * 1000)
    members = await client.zrange(keys.WORKERS, 0, -1)
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in members]
    if not ids:
        return []
    out = []
    for worker_id, raw in zip(ids, await client.mget([keys.worker(i) for i in ids]), strict=True):
        if raw is None:
            continue  # expired between the two reads
        try:
            out.append(decode_info(raw))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("unreadable worker record skipped", worker=worker_id, error=str(exc))
    return sorted(out, key=lambda w: w.id)

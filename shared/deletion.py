"""Deleting a job's Redis state, for good.

A delete adds the job to `keys.DELETED_JOBS` and removes every key that names it, in one
script. The scripts that write such keys (emit, lease, recoveries, commands) check that set
first, so a worker that is still stopping, a reaper in the middle of a sweep or a tracker
flushing its last event cannot bring any of them back: nothing of the job remains once its
worker has let go, and nothing has to wait for it.
"""

from __future__ import annotations

import time
from typing import Any

from shared import keys

FORGET_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('DEL', unpack(KEYS, 3))
"""


async def forget(client: Any, job_id: str) -> int:
    """Mark the job deleted and remove its keys; returns how many keys there were."""
    now_ms = int(time.time() * 1000)
    script = client.register_script(FORGET_SCRIPT)
    removed = await script(
        keys=[keys.DELETED_JOBS, keys.ACTIVE_JOBS, *keys.job_keys(job_id)],
        args=[job_id, now_ms, now_ms - keys.DELETED_RETENTION_S * 1000],
    )
    return int(removed)


async def is_deleted(client: Any, job_id: str) -> bool:
    return await client.zscore(keys.DELETED_JOBS, job_id) is not None

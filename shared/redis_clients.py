"""Redis clients with timeouts, for every process.

Without a socket timeout a stalled Redis (paused, swapping, partitioned) hangs every caller for
as long as the stall lasts: readiness checks said 200 after 30 s, a POST waited 30 s. Every
client here connects within `timeout_s` and gives up on a reply after `timeout_s`, so a request
handler can answer 503 at once. A blocking read (XREAD BLOCK, a pub/sub wait) passes its own
block time as `block_s`, which is added to the read timeout.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
from arq.connections import ArqRedis

HEALTH_CHECK_S = 30
"""An idle pooled connection is pinged before reuse after this long (a server restart or a
dropped connection then costs one reconnect, not a failed command)."""


def options(timeout_s: float, block_s: float = 0.0) -> dict[str, Any]:
    """Connection options for redis-py clients."""
    return {
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s + block_s,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_S,
    }


def async_client(url: str, timeout_s: float, *, block_s: float = 0.0) -> aredis.Redis:
    return aredis.Redis.from_url(url, **options(timeout_s, block_s))


def sync_client(url: str, timeout_s: float, *, block_s: float = 0.0) -> redis.Redis:
    return redis.Redis.from_url(url, **options(timeout_s, block_s))


def arq_client(url: str, timeout_s: float, queue_name: str) -> ArqRedis:
    """An arq client (queue and Redis in one) with the same timeouts (arq's own `create_pool`
    sets none but the connect timeout). It owns its pool: `aclose()` closes both."""
    pool = aredis.ConnectionPool.from_url(url, **options(timeout_s))
    client = ArqRedis(pool, default_queue_name=queue_name)
    client.auto_close_connection_pool = True
    return client


def url_with_timeouts(url: str, timeout_s: float, *, block_s: float = 0.0) -> str:
    """`url` with the timeouts as query parameters, for a process that builds its own client
    with `from_url` (the training process)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("socket_connect_timeout", f"{timeout_s:g}")
    query.setdefault("socket_timeout", f"{timeout_s + block_s:g}")
    query.setdefault("socket_keepalive", "true")
    return urlunsplit(parts._replace(query=urlencode(query)))

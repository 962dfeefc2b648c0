"""What the API holds open while it runs, owned by the app's lifespan and closed in reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
from arq.connections import ArqRedis
from litestar import Litestar
from litestar.datastructures import State

from services.api.cache import ResponseCache
from services.api.live_hub import LiveHub
from shared import keys
from shared.db import create_pool as create_db_pool
from shared.db import migrate
from shared.emit import AsyncEmitter
from shared.redis_clients import arq_client
from shared.settings import Settings
from shared.storage import BlobStore, open_store


@dataclass
class Resources:
    settings: Settings
    db: asyncpg.Pool
    redis: ArqRedis
    """Also the arq queue client: an ArqRedis is a redis.asyncio.Redis."""
    emitter: AsyncEmitter
    hub: LiveHub
    """The process's one pub/sub connection, shared by every WebSocket (see live_hub)."""
    blobs: BlobStore
    """Where checkpoints and ONNX models are (downloads stream from it; deletes empty it)."""
    metrics_cache: ResponseCache = field(default_factory=ResponseCache)
    """Encoded metrics responses, keyed by the job's last event id (see services/api/cache)."""


def resources_of(state: State) -> Resources:
    """The running app's resources (set by `lifespan`), for route handlers."""
    return state.resources  # type: ignore[no-any-return,unused-ignore]


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    assert settings.redis_url and settings.database_url, "resolve store URLs before the API starts"
    async with AsyncExitStack() as stack:
        pool = await create_db_pool(settings.database_url, min_size=1, max_size=10)
        stack.push_async_callback(pool.close)
        async with pool.acquire() as conn:
            await migrate(conn)
        redis = arq_client(settings.redis_url, settings.redis_timeout_s, keys.ARQ_QUEUE)
        stack.push_async_callback(redis.aclose)
        hub = LiveHub(settings.redis_url)  # connects on its first listener
        stack.push_async_callback(hub.aclose)
        yield Resources(
            settings=settings,
            db=pool,
            redis=redis,
            emitter=AsyncEmitter(redis, settings.job_stream_maxlen),
            hub=hub,
            blobs=open_store(settings),
        )


def lifespan(settings: Settings) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """A Litestar lifespan that opens the resources into `app.state.resources`."""

    @asynccontextmanager
    async def _lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(settings) as resources:
            app.state.resources = resources
            yield

    return _lifespan

"""One Redis pub/sub connection per API process, fanned out to the WebSockets it serves.

Every API process subscribes to the channels its own clients watch, so any number of API
processes behind one Redis all push every event (pub/sub broadcasts; nothing is split between
replicas). A job's channel is subscribed when its first local listener arrives and unsubscribed
when the last one leaves; the connection itself is opened with the first listener of any job and
closed with the last, so an idle API holds no pub/sub connection and leaves no task behind.

The hub never waits on a listener: each has a bounded buffer, and one that falls too far behind
is cut off (`Subscription.lost`) instead of holding up the others. Its WebSocket then tells the
client to resume with `?after=`, which loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aredis
import structlog
from redis.exceptions import RedisError

from shared.emit import split_live_message
from shared.events import AnyEvent, decode_event, parse_event_id

log = structlog.get_logger(__name__)

SEND_BUFFER_EVENTS = 512
"""Events a listener may have waiting before it counts as too slow and is disconnected."""

SUBSCRIBE_TIMEOUT_S = 5.0

FEED_TOO_SLOW = "too slow"
FEED_INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class LiveItem:
    """One published event, parsed once for all listeners."""

    event_id: str
    key: tuple[int, int]
    """The id as a comparable (ms, seq) pair."""
    event: AnyEvent | None
    """None when the payload does not decode (a newer schema, corruption): skipped by readers."""
    memo: dict[object, str] = field(default_factory=dict, compare=False)
    """Messages already built for this event, shared by listeners in the same state."""


def parse_item(data: bytes | str) -> LiveItem | None:
    """A pub/sub payload `<id> <json>` → LiveItem, or None when the id itself is unreadable."""
    event_id, payload = split_live_message(data)
    try:
        key = parse_event_id(event_id)
    except ValueError:
        return None
    try:
        event: AnyEvent | None = decode_event(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        event = None
    return LiveItem(event_id, key, event)


class FeedLost(Exception):
    """The listener was cut off; `reason` is FEED_TOO_SLOW or FEED_INTERRUPTED."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscription:
    """One local listener on one channel: a bounded buffer that the hub fills without waiting."""

    def __init__(self, channel: str, limit: int) -> None:
        self.channel = channel
        self._limit = limit
        self._items: deque[LiveItem] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        """Resolves with the reason when the listener is cut off (await it beside a send)."""

    def push(self, item: LiveItem) -> None:
        if self.lost.done():
            return
        if len(self._items) >= self._limit:
            self.fail(FEED_TOO_SLOW)
            return
        self._items.append(item)
        self._wake()

    def fail(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)
            self._items.clear()
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, timeout: float) -> LiveItem | None:
        """The next item, or None after `timeout` seconds without one; raises FeedLost."""
        if not self._items and not self.lost.done() and timeout > 0:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                pass
            finally:
                self._waiter = None
        if self.lost.done():
            raise FeedLost(self.lost.result())
        return self._items.popleft() if self._items else None


class LiveHub:
    """The process's pub/sub connection and the local listeners of each channel."""

    def __init__(self, redis_url: str, buffer_limit: int = SEND_BUFFER_EVENTS) -> None:
        self._url = redis_url
        self._limit = buffer_limit
        self._lock = asyncio.Lock()
        self._client: aredis.Redis | None = None
        self._pubsub: aredis.client.PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listeners: dict[str, set[Subscription]] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._confirms: dict[str, deque[asyncio.Future[None]]] = {}

    @property
    def channels(self) -> int:
        """Channels subscribed now (for tests and metrics)."""
        return len(self._listeners)

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[Subscription]:
        """A subscription that receives every message published after this returns."""
        sub = await self.subscribe(channel)
        try:
            yield sub
        finally:
            await self.unsubscribe(sub)

    async def subscribe(self, channel: str) -> Subscription:
        """Subscribe, and return once Redis has confirmed the channel's subscription."""
        async with self._lock:
            sub = Subscription(channel, self._limit)
            listeners = self._listeners.get(channel)
            if listeners is None:
                listeners = self._listeners[channel] = set()
                ready = self._ready[channel] = asyncio.get_running_loop().create_future()
                self._confirms.setdefault(channel, deque()).append(ready)
                try:
                    await self._connected().subscribe(channel)
                except (RedisError, OSError):
                    await self._reset(FEED_INTERRUPTED)
                    raise
                if self._reader is None:
                    self._reader = asyncio.create_task(self._read(), name="live-hub-reader")
            listeners.add(sub)
            ready = self._ready[channel]
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await asyncio.shield(ready)
        except BaseException:
            await self.unsubscribe(sub)
            raise
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        async with self._lock:
            listeners = self._listeners.get(sub.channel)
            if listeners is None or sub not in listeners:
                return
            listeners.discard(sub)
            if listeners:
                return
            del self._listeners[sub.channel]
            self._ready.pop(sub.channel, None)
            if not self._listeners:
                await self._close()
                return
            try:
                assert self._pubsub is not None
                await self._pubsub.unsubscribe(sub.channel)
            except (RedisError, OSError):
                await self._reset(FEED_INTERRUPTED)

    def _connected(self) -> aredis.client.PubSub:
        if self._pubsub is None:
            # A connect timeout only: the reader waits for messages without one.
            self._client = aredis.Redis.from_url(
                self._url, socket_connect_timeout=SUBSCRIBE_TIMEOUT_S, socket_keepalive=True
            )
            self._pubsub = self._client.pubsub()
        return self._pubsub

    async def _read(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    self._dispatch(message)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("live feed interrupted", error=str(exc))
            async with self._lock:
                if self._pubsub is pubsub:
                    self._reader = None  # this task ends here; _reset must not cancel it
                    await self._reset(FEED_INTERRUPTED)

    def _dispatch(self, message: dict[str, object]) -> None:
        kind = message["type"]
        raw_channel = message["channel"]
        channel = raw_channel.decode() if isinstance(raw_channel, bytes) else str(raw_channel)
        if kind == "message":
            listeners = self._listeners.get(channel)
            if not listeners:
                return
            data = message["data"]
            assert isinstance(data, bytes | str)
            item = parse_item(data)
            if item is None:
                log.warning("unreadable live message", channel=channel)
                return
            for sub in tuple(listeners):
                sub.push(item)
        elif kind == "subscribe":
            confirms = self._confirms.get(channel)
            if confirms:
                future = confirms.popleft()
                if not future.done():
                    future.set_result(None)

    async def _reset(self, reason: str) -> None:
        """Cut every listener off (they resume gap-free with ?after=) and drop the connection."""
        for listeners in self._listeners.values():
            for sub in listeners:
                sub.fail(reason)
        for future in self._ready.values():
            if not future.done():
                future.set_exception(FeedLost(reason))
                future.exception()  # retrieved here: a waiter may already have given up
        self._listeners.clear()
        await self._close()

    async def aclose(self) -> None:
        """Cut every listener off and close the connection (the app's lifespan ends)."""
        await self._reset(FEED_INTERRUPTED)

    async def _close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader})
        pubsub, self._pubsub = self._pubsub, None
        client, self._client = self._client, None
        self._ready.clear()
        self._confirms.clear()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

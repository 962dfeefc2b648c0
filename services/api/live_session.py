"""One WebSocket watching one job: snapshot, gap-free backlog, then live events from the hub.

Resume without a gap or a duplicate: the session subscribes to the job's channel first (the
hub buffers what arrives), then reads the backlog after the client's cursor (database and the
job's Redis stream, see `shared.event_log`), sends it, and only then drains the buffer,
skipping every id it has already sent. An event published while the backlog is read is in both
and goes out once; one published after it is in the buffer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect

from services.api import live_messages as msg
from services.api.inputs import decode_json
from services.api.live_hub import FEED_TOO_SLOW, FeedLost, LiveItem, Subscription
from services.api.queue import NOT_QUEUED
from services.api.resources import Resources
from shared import live_state
from shared.errors import InvalidInput
from shared.event_log import StoredEvent, events_after
from shared.events import (
    EpochCompleted,
    EvaluationCompleted,
    JobWarning,
    decode_event,
    parse_event_id,
)
from shared.status import JobStatus

log = structlog.get_logger(__name__)

BACKLOG_PAGE = 1000
CLOSE_TIMEOUT_S = 30.0
"""How long a close frame may wait behind a slow client's unread data before giving up."""

CLOSE_NORMAL = 1000
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_REQUEST = 4400
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_SLOW = 4408
CLOSE_ERROR = 1011


class Sender:
    """The one writer of a socket: the event pump and the ping handler take turns."""

    def __init__(self, socket: WebSocket[Any, Any, Any]) -> None:
        self._socket = socket
        self._lock = asyncio.Lock()

    async def send(self, text: str) -> None:
        async with self._lock:
            await self._socket.send_text(text)


QUEUE_REFRESH_S = 1.0
"""How often a queued job's watcher re-reads its place in the queue (sent when it changes)."""

QueueFields = Callable[[live_state.LiveStatus], Awaitable[dict[str, Any]]]
"""The queue fields of a job in a state (see services/api/queue.queue_fields)."""


@dataclass
class Feed:
    """What a client has been sent so far, and how the next event turns into messages."""

    state: live_state.LiveStatus
    sender: Sender
    last_key: tuple[int, int] | None = None
    last_status_at: float = field(default_factory=time.monotonic)
    sent_id: str | None = None
    """The newest event whose messages all went out: where a cut-off client should resume."""
    queue: QueueFields | None = None
    """Where a queued job stands in the queue; None: no queue fields (a replay)."""
    queue_shown: dict[str, Any] = field(default_factory=lambda: dict(NOT_QUEUED))
    last_queue_at: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> bool:
        return live_state.is_terminal(self.state)

    @property
    def queued(self) -> bool:
        return self.queue is not None and self.state["status"] == JobStatus.QUEUED

    async def send_status(self, memo: dict[object, str] | None = None) -> None:
        """Send the status; `memo` shares the encoded text between listeners of one event."""
        if self.queued:
            assert self.queue is not None
            self.queue_shown = await self.queue(self.state)
            self.last_queue_at = time.monotonic()
            text = msg.training_status(self.state, self.queue_shown)
        elif memo is None:
            text = msg.training_status(self.state, self._queue_extra())
        else:
            signature = tuple(self.state.values())
            text = memo.get(signature) or memo.setdefault(
                signature, msg.training_status(self.state, self._queue_extra())
            )
        await self.sender.send(text)
        self.last_status_at = time.monotonic()

    def _queue_extra(self) -> dict[str, Any] | None:
        return dict(NOT_QUEUED) if self.queue is not None else None

    async def apply(self, item: LiveItem) -> None:
        """Send what `item` means to a watcher; ids at or before the last one sent are dropped."""
        if self.last_key is not None and item.key <= self.last_key:
            return
        self.last_key = item.key
        event = item.event
        if event is None:
            return
        self.state = live_state.apply(self.state, event, item.event_id)
        match event:
            case EpochCompleted():
                text = item.memo.get("epoch") or item.memo.setdefault(
                    "epoch", msg.epoch_completed(event, item.event_id)
                )
                await self.sender.send(text)
            case JobWarning():
                await self.sender.send(msg.warning(event, item.event_id))
                self.sent_id = item.event_id
                return
            case EvaluationCompleted():
                text = item.memo.get("evaluation") or item.memo.setdefault(
                    "evaluation", msg.evaluation(event, item.event_id)
                )
                await self.sender.send(text)
                self.sent_id = item.event_id
                return
        await self.send_status(item.memo)
        self.sent_id = item.event_id

    async def heartbeat_wait(self, sub: Subscription, heartbeat_s: float) -> LiveItem | None:
        """The next live item, or None (after sending a heartbeat) when it is time for one.
        A queued job's place is re-read every QUEUE_REFRESH_S and sent when it moved."""
        now = time.monotonic()
        remaining = heartbeat_s - (now - self.last_status_at)
        if self.queued:
            remaining = min(remaining, QUEUE_REFRESH_S - (now - self.last_queue_at))
        item = await sub.next(max(remaining, 0.0))
        if item is not None:
            return item
        if time.monotonic() - self.last_status_at >= heartbeat_s or not self.queued:
            await self.send_status()
        else:
            assert self.queue is not None
            shown = self.queue_shown
            self.queue_shown = await self.queue(self.state)
            self.last_queue_at = time.monotonic()
            if self.queue_shown != shown:
                await self.sender.send(msg.training_status(self.state, self.queue_shown))
                self.last_status_at = time.monotonic()
        return None


def stored_item(event: StoredEvent) -> LiveItem:
    try:
        decoded: Any = decode_event(event.event)
    except (msgspec.DecodeError, msgspec.ValidationError):
        decoded = None
    return LiveItem(event.event_id, parse_event_id(event.event_id), decoded)


async def send_backlog(res: Resources, job_id: str, feed: Feed, after: str | None) -> None:
    """Every stored event after `after`, page by page, until the job finishes or none is left."""
    cursor = after
    while not feed.finished:
        page = await events_after(res.db, res.redis, job_id, cursor, BACKLOG_PAGE)
        for event in page:
            await feed.apply(stored_item(event))
            if feed.finished:
                return
        if len(page) < BACKLOG_PAGE:
            return
        cursor = page[-1].event_id


async def pump_live(feed: Feed, sub: Subscription, heartbeat_s: float, replay: bool) -> None:
    """Live events until the job finishes; a replay that starts over resets the status."""
    while not feed.finished:
        item = await feed.heartbeat_wait(sub, heartbeat_s)
        if item is None:
            continue
        if replay and feed.last_key is not None and item.key <= feed.last_key:
            feed.state, feed.last_key = live_state.blank(feed.state), None
        await feed.apply(item)


async def receive_loop(socket: WebSocket[Any, Any, Any], sender: Sender) -> None:
    """Answers pings and explains anything else; returns when the client goes away."""
    while True:
        message = await socket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data: Any = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        try:
            decoded = decode_json(data)
        except InvalidInput as exc:
            await sender.send(msg.error(f'{exc.detail}; expected JSON like {{"event": "ping"}}'))
            continue
        if isinstance(decoded, dict) and decoded.get("event") == "ping":
            await sender.send(msg.pong())
        else:
            await sender.send(
                msg.error('unknown message: the server understands {"event": "ping"}')
            )


async def close(socket: WebSocket[Any, Any, Any], code: int, reason: str) -> None:
    """Send a close frame; a client that reads nothing never gets it, so this gives up."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await socket.close(code=code, reason=reason[:120])
    except (TimeoutError, OSError, RuntimeError):
        pass
    except Exception as exc:  # the client is gone already: nothing left to tell it
        log.debug("close after disconnect", error=str(exc))


async def supervise(
    socket: WebSocket[Any, Any, Any],
    sender: Sender,
    sub: Subscription,
    pump: Callable[[], Coroutine[Any, Any, None]],
    resume_hint: Callable[[], str | None],
) -> None:
    """Run the pump beside the receive loop; whichever ends first decides how the socket closes."""
    pump_task = asyncio.create_task(pump())
    receive_task = asyncio.create_task(receive_loop(socket, sender))
    try:
        waits: set[asyncio.Future[Any]] = {pump_task, receive_task, sub.lost}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump_task, receive_task):
            task.cancel()
        await asyncio.wait({pump_task, receive_task})
    # Both outcomes are read here, so that neither task is left with an unread exception
    # (asyncio logs "Task exception was never retrieved" for each, once per lost client).
    error = None if pump_task.cancelled() else pump_task.exception()
    if not receive_task.cancelled():
        receive_task.exception()  # read as well: the client left, or its connection broke
        return
    after = resume_hint()
    resume = f"; reconnect with ?after={after} to resume" if after else "; reconnect to resume"
    if sub.lost.done():
        reason = sub.lost.result()
        log.info("websocket feed lost", reason=reason, last_event_id=after)
        if reason == FEED_TOO_SLOW:
            await close(socket, CLOSE_TOO_SLOW, f"client too slow, fell behind{resume}")
        else:
            await close(socket, CLOSE_TRY_AGAIN, f"live feed interrupted{resume}")
        return
    if isinstance(error, OSError | WebSocketDisconnect):
        return  # the client left while we were sending
    if isinstance(error, FeedLost):
        await close(socket, CLOSE_TRY_AGAIN, f"live feed interrupted{resume}")
    elif error is not None:
        log.error("websocket pump failed", error=repr(error))
        await close(socket, CLOSE_ERROR, f"server error{resume}")
    else:
        await close(socket, CLOSE_NORMAL, "job finished")

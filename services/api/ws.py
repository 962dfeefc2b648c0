"""WebSocket endpoints: a job's live status (`/ws/training/{id}`) and replays (`/ws/replay/{id}`).

Messages are the seed's (`connected`, `training_status`, `pong`) plus `epoch_completed`,
`warning` and `error`; every message about an event carries its `event_id`, and a client that
reconnects with `?after=<the last event_id it got>` receives everything it missed, once.
Close codes: 1000 the job finished; 4404 unknown job; 4400 a bad `after`; 4408 the client fell
too far behind; 1013 the live feed (or the database) was interrupted (both of the last two:
resume with `after`). An `after` beyond the job's newest event (a client of a job whose events
were lost with a Redis that died, or a made-up id) counts as "from now": the client gets the
job's state and then its live events, its final status and a close, never a silent socket.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from litestar import Litestar, WebSocket, websocket
from litestar.params import FromPath
from redis.exceptions import RedisError

from services.api import live_messages as msg
from services.api.live_hub import FeedLost, LiveHub
from services.api.live_session import (
    CLOSE_BAD_REQUEST,
    CLOSE_NORMAL,
    CLOSE_NOT_FOUND,
    CLOSE_TRY_AGAIN,
    Feed,
    Sender,
    close,
    pump_live,
    send_backlog,
    supervise,
)
from services.api.observability import ACTIVE_WEBSOCKETS
from services.api.queue import queue_fields
from services.api.resources import Resources
from shared import job_state, keys, live_state
from shared.events import parse_event_id
from shared.ids import InvalidJobId, canonical_job_id
from shared.jobs import fetch_job

UNAVAILABLE = (FeedLost, RedisError, OSError, TimeoutError, asyncpg.PostgresError)
"""Store failures that end a socket with 1013 (reconnect and resume) instead of an error."""

Socket = WebSocket[Any, Any, Any]

log = structlog.get_logger(__name__)


def hub_of(app: Litestar) -> LiveHub:
    """The process's hub, owned by the app's lifespan (services/api/resources.py)."""
    res: Resources = app.state.resources
    return res.hub


async def _refuse(socket: Socket, sender: Sender, code: int, detail: str, job_id: str) -> None:
    await sender.send(msg.error(detail, job_id))
    await close(socket, code, detail)


async def _job_id(socket: Socket, sender: Sender, raw: str) -> str | None:
    """The canonical id of the path's job id, or None after refusing a non-UUID."""
    try:
        return canonical_job_id(raw)
    except InvalidJobId as exc:
        await _refuse(socket, sender, CLOSE_NOT_FOUND, str(exc), raw)
        return None


async def _job_row(socket: Socket, sender: Sender, job_id: str) -> Any:
    """The job's row, or None after telling the client there is no such job."""
    res: Resources = socket.app.state.resources
    async with res.db.acquire() as conn:
        row = await fetch_job(conn, job_id)
    if row is None:
        await _refuse(
            socket, sender, CLOSE_NOT_FOUND, f"no training job with id {job_id!r}", job_id
        )
    return row


async def _newest_id(res: Resources, last: str | None, job_id: str) -> tuple[int, int] | None:
    """The id of the job's newest event: its stream's, or the row's when that is newer."""
    newest = [parse_event_id(last)] if last else []
    tail = await res.redis.xrevrange(keys.job_stream(job_id), count=1)
    if tail:
        raw = tail[0][0]
        newest.append(parse_event_id(raw.decode() if isinstance(raw, bytes) else str(raw)))
    return max(newest) if newest else None


@websocket("/ws/training/{job_id:str}", name="training_ws")
async def training_socket(socket: Socket, job_id: FromPath[str]) -> None:
    """Live status of one job; `?after=EVENT_ID` first sends every event after that id."""
    await socket.accept()
    with ACTIVE_WEBSOCKETS.track_inprogress():
        await _serve_training(socket, job_id)


async def _serve_training(socket: Socket, raw_id: str) -> None:  # noqa: C901 - one path
    sender = Sender(socket)
    res: Resources = socket.app.state.resources
    after = socket.query_params.get("after") or None
    job_id = await _job_id(socket, sender, raw_id)
    if job_id is None:
        return
    try:
        after_key = parse_event_id(after) if after else None
    except ValueError as exc:
        await _refuse(socket, sender, CLOSE_BAD_REQUEST, str(exc), job_id)
        return
    try:
        # Subscribe before reading anything, so that nothing published meanwhile is missed.
        async with hub_of(socket.app).listen(keys.job_channel(job_id)) as sub:
            row = await _job_row(socket, sender, job_id)
            if row is None:
                return
            # The job as it stands now: the row with what the recorder has not written yet,
            # and the values that have no column from the newest batch it reflects.
            snapshot = await job_state.catch_up(res.redis, live_state.from_row(row), job_id)
            snapshot = await job_state.with_last_batch(res.redis, snapshot, job_id)
            config = row["config"]

            async def queue(state: live_state.LiveStatus) -> dict[str, Any]:
                return await queue_fields(res.redis, {**state, "config": config})

            feed = Feed(snapshot, sender, queue=queue)
            last = snapshot["last_event_id"]
            if after_key is not None:
                newest = await _newest_id(res, last, job_id)
                if newest is None or after_key > newest:
                    log.info("websocket after beyond the newest event", job_id=job_id, after=after)
                    after = after_key = None
            if after is not None and after_key is not None:
                if last is None or after_key < parse_event_id(last):
                    feed.state = live_state.rewound(snapshot)
                # The snapshot's id is the cursor the stream continues from.
                feed.state["last_event_id"], feed.last_key = after, after_key
            elif last is not None:
                feed.last_key = parse_event_id(last)
            feed.sent_id = feed.state["last_event_id"]
            await sender.send(msg.connected(job_id))
            await feed.send_status()
            if feed.finished:
                await close(socket, CLOSE_NORMAL, "job finished")
                return

            async def pump() -> None:
                await send_backlog(res, job_id, feed, after or last)
                if not feed.finished and live_state.is_terminal(snapshot):
                    feed.state = dict(snapshot, last_event_id=feed.state["last_event_id"])
                    await feed.send_status()
                    return
                await pump_live(feed, sub, res.settings.heartbeat_s, replay=False)

            await supervise(socket, sender, sub, pump, lambda: feed.sent_id)
    except UNAVAILABLE:
        await close(socket, CLOSE_TRY_AGAIN, "live feed unavailable; reconnect to resume")


@websocket("/ws/replay/{job_id:str}", name="replay_ws")
async def replay_socket(socket: Socket, job_id: FromPath[str]) -> None:
    """What `heimdall replay JOB_ID` re-emits, in the same messages as a live job."""
    await socket.accept()
    with ACTIVE_WEBSOCKETS.track_inprogress():
        await _serve_replay(socket, job_id)


async def _serve_replay(socket: Socket, raw_id: str) -> None:
    sender = Sender(socket)
    res: Resources = socket.app.state.resources
    job_id = await _job_id(socket, sender, raw_id)
    if job_id is None:
        return
    try:
        async with hub_of(socket.app).listen(keys.replay_channel(job_id)) as sub:
            row = await _job_row(socket, sender, job_id)
            if row is None:
                return
            feed = Feed(live_state.blank(live_state.from_row(row)), sender)
            await sender.send(msg.connected(job_id, replay=True))
            await feed.send_status()

            async def pump() -> None:
                await pump_live(feed, sub, res.settings.heartbeat_s, replay=True)

            await supervise(socket, sender, sub, pump, lambda: None)
    except UNAVAILABLE:
        await close(socket, CLOSE_TRY_AGAIN, "replay feed unavailable; reconnect")


def ws_routes() -> list[Any]:
    """The WebSocket route handlers, for `create_app`."""
    return [training_socket, replay_socket]

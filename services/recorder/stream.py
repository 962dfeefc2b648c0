"""The events stream, from the recorders' consumer group's side: read, claim, ack, trim."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aredis
import structlog
from redis.exceptions import ResponseError

from shared import keys
from shared.events import parse_event_id

from .settings import RecorderSettings

log = structlog.get_logger(__name__)

RawEntry = tuple[bytes, dict[bytes, bytes]]

# Removes a consumer only if it still has nothing pending, atomically: XGROUP DELCONSUMER drops
# a consumer's pending entries, which must never happen to entries not yet persisted.
_DELETE_IDLE_CONSUMER = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending == 0 then
    return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _key(entry_id: str) -> tuple[int, int]:
    return parse_event_id(entry_id)


class EventStream:
    """One consumer of `keys.EVENTS_STREAM` in group `keys.RECORDER_GROUP`."""

    def __init__(
        self,
        client: aredis.Redis,
        consumer: str,
        settings: RecorderSettings,
        *,
        stream: str = keys.EVENTS_STREAM,
        group: str = keys.RECORDER_GROUP,
    ) -> None:
        self.client = client
        self.consumer = consumer
        self.stream = stream
        self.group = group
        self._settings = settings
        self._delete_idle = client.register_script(_DELETE_IDLE_CONSUMER)

    async def ensure_group(self) -> None:
        """Create the group (and the stream) if needed, from the stream's very beginning."""
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("consumer group created", stream=self.stream, group=self.group)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, block_ms: int) -> list[RawEntry]:
        """New entries for this consumer, waiting up to `block_ms` for the first."""
        try:
            reply = await self.client.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=self._settings.batch_size,
                block=max(block_ms, 1),
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group missing, recreating it", stream=self.stream)
            await self.ensure_group()
            return []
        if not reply:
            return []
        # RESP2 gives [[stream, entries]], RESP3 {stream: [entries]}.
        streams = reply.values() if isinstance(reply, dict) else [e for _, e in reply]
        return [(eid, fields) for entries in streams for eid, fields in entries if eid is not None]

    async def claim(self, start: str) -> tuple[str, list[RawEntry]]:
        """Take over entries idle for `claim_idle_ms` in other (dead) consumers.

        Returns the cursor for the next call ("0-0" when the scan is complete) and the claimed
        entries. Entries deleted from the stream meanwhile are dropped from the pending list by
        the server.
        """
        try:
            reply = await self.client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self._settings.claim_idle_ms,
                start_id=start,
                count=self._settings.batch_size,
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return "0-0", []
        cursor = _text(reply[0])
        entries = [(eid, fields) for eid, fields in reply[1] if eid is not None]
        return cursor, entries

    async def ack(self, ids: list[bytes]) -> int:
        if not ids:
            return 0
        return int(await self.client.xack(self.stream, self.group, *ids))

    async def safe_trim_id(self) -> str | None:
        """The lowest id some group still needs: every entry below it is acked by every group.

        For each group that is the oldest pending entry, or, when nothing is pending, its
        last-delivered id (entries after it were never delivered). Read in one MULTI, groups
        first, so an entry delivered in between is still counted as pending.
        """
        groups = await self.client.xinfo_groups(self.stream)
        names = [_text(g["name"]) for g in groups]
        if not names:
            return None
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xinfo_groups(self.stream)
            for name in names:
                pipe.xpending(self.stream, name)
            replies = await pipe.execute()
        infos = {_text(g["name"]): g for g in replies[0]}
        floor: tuple[int, int] | None = None
        for name, pending in zip(names, replies[1:], strict=True):
            info = infos.get(name)
            if info is None:
                continue
            last = _text(info["last-delivered-id"])
            needed = _text(pending["min"]) if int(pending["pending"]) else last
            key = _key(needed)
            if floor is None or key < floor:
                floor = key
        if floor is None or floor == (0, 0):
            return None
        return f"{floor[0]}-{floor[1]}"

    async def trim(self) -> int:
        """XTRIM MINID to the oldest entry some group still needs; returns entries removed."""
        minid = await self.safe_trim_id()
        if minid is None:
            return 0
        removed = int(await self.client.xtrim(self.stream, minid=minid, approximate=False))
        if removed:
            log.info("events stream trimmed", minid=minid, removed=removed)
        return removed

    async def forget_dead_consumers(self) -> list[str]:
        """Remove consumers idle for long with nothing pending (each process has its own)."""
        idle_ms = int(self._settings.dead_consumer_idle_s * 1000)
        removed = []
        for info in await self.client.xinfo_consumers(self.stream, self.group):
            name = _text(info["name"])
            if name == self.consumer or int(info["pending"]) or int(info["idle"]) < idle_ms:
                continue
            result = await self._delete_idle(keys=[self.stream], args=[self.group, name])
            if int(result) >= 0:
                removed.append(name)
        if removed:
            log.info("idle consumers removed", consumers=removed)
        return removed

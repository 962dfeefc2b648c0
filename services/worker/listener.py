"""The worker's ear on the commands stream: every worker reads every command (no group)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aredis
import structlog
from redis.exceptions import RedisError

from shared import keys
from shared.aio import raise_if_cancelling
from shared.commands import AnyCommand, CancelJob, DeleteJob, PauseJob, decode_command

log = structlog.get_logger(__name__)

BLOCK_MS = 1000


@dataclass
class Watch:
    """Commands for one running job, as they arrive."""

    job_id: str
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    command: CancelJob | DeleteJob | None = None
    pause_requested: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, command: AnyCommand) -> None:
        if isinstance(command, PauseJob):
            self.pause_requested.set()
        if isinstance(command, CancelJob | DeleteJob) and self.command is None:
            self.command = command
            self.stop_requested.set()


class CommandListener:
    """Reads `keys.COMMANDS_STREAM` with XREAD BLOCK from its end at start-up and hands each
    command to the watch of its job, if this worker runs it. Cancel commands also set the
    job's cancel flag, which the runner checks, so a command that arrives before a job is
    watched is not lost."""

    def __init__(self, client: aredis.Redis) -> None:
        self._client = client
        self._watches: dict[str, Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_id = "$"

    async def start(self) -> None:
        latest = await self._client.xrevrange(keys.COMMANDS_STREAM, count=1)
        self._last_id = _text(latest[0][0]) if latest else "0-0"
        self._task = asyncio.create_task(self._loop(), name="heimdall-command-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def watch(self, job_id: str) -> Watch:
        watch = Watch(job_id)
        self._watches[job_id] = watch
        return watch

    def unwatch(self, job_id: str) -> None:
        self._watches.pop(job_id, None)

    async def _loop(self) -> None:
        while True:
            try:
                reply = await self._client.xread(
                    {keys.COMMANDS_STREAM: self._last_id}, block=BLOCK_MS, count=100
                )
            except (RedisError, OSError) as exc:
                log.warning("commands stream unavailable; retrying", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            raise_if_cancelling()
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._last_id = _text(entry_id)
                    self._dispatch(fields)

    def _dispatch(self, fields: dict[bytes, bytes]) -> None:
        try:
            command = decode_command(fields[b"data"])
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("undecodable command ignored", error=str(exc))
            return
        watch = self._watches.get(command.job_id)
        if watch is not None:
            log.info("command received", job_id=command.job_id, command=command.type_name())
            watch.deliver(command)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

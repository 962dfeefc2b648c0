"""Commands: what the API asks of the worker training a job, sent over the `commands` Redis Stream.

Workers read the stream without a consumer group, so every worker sees every command (a cancel
must reach whichever worker runs the job). Jobs themselves are handed to workers by the arq
queue, and a resume is a new queue task, so only the commands that change a job's course while
it runs are here.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from shared import keys

SCHEMA_VERSION = 1

FLAG_TTL_S = 30 * 24 * 3600
"""How long a cancel or pause flag waits for a worker to pick the job up."""


class Command(msgspec.Struct, tag_field="type", kw_only=True):
    job_id: str
    ts: float = msgspec.field(default_factory=time.time)
    v: int = SCHEMA_VERSION

    def type_name(self) -> str:
        """The tag this command travels under (`cancel`, `delete`, `pause`)."""
        return str(type(self).__struct_config__.tag)


class CancelJob(Command, tag="cancel"):
    reason: str = "cancelled by user"


class DeleteJob(Command, tag="delete"):
    pass


class PauseJob(Command, tag="pause"):
    pass


AnyCommand = CancelJob | DeleteJob | PauseJob

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyCommand] = msgspec.json.Decoder(AnyCommand)

SEND_SCRIPT = """
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return false end
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4]) end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'job', ARGV[1], 'data', ARGV[2])
"""
"""Set the command's flag and append it, unless the job was deleted meanwhile."""


def encode_command(command: Command) -> bytes:
    return _encoder.encode(command)


def decode_command(data: bytes | str) -> AnyCommand:
    return _decoder.decode(data)


def _flag(command: Command) -> str:
    """The flag a worker that picks the job up later finds: it never starts a cancelled job and
    pauses a paused one at once."""
    if isinstance(command, CancelJob | DeleteJob):
        return keys.cancel_flag(command.job_id)
    if isinstance(command, PauseJob):
        return keys.pause_flag(command.job_id)
    return ""


async def send_command(client: Any, command: Command) -> str | None:
    """Set the command's flag and append it to the commands stream, atomically; returns its id
    (None when the job has been deleted)."""
    script = client.register_script(SEND_SCRIPT)
    reply = await script(
        keys=[keys.COMMANDS_STREAM, _flag(command), keys.DELETED_JOBS],
        args=[
            command.job_id,
            encode_command(command),
            command.type_name(),
            FLAG_TTL_S,
            keys.COMMANDS_MAXLEN,
        ],
    )
    if reply is None:
        return None
    return reply.decode() if isinstance(reply, bytes) else str(reply)

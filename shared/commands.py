"""Commands: what the API asks of the workers, sent over the `commands` Redis Stream.

Workers read the stream without a consumer group, so every worker sees every command (a cancel
must reach whichever worker runs the job). Submissions are also enqueued on the arq queue,
which hands each job to exactly one worker.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

SCHEMA_VERSION = 1


class Command(msgspec.Struct, tag_field="type", kw_only=True):
    job_id: str
    ts: float = msgspec.field(default_factory=time.time)
    v: int = SCHEMA_VERSION

    def type_name(self) -> str:
        """The tag this command travels under (`submit`, `cancel`, ...)."""
        return str(type(self).__struct_config__.tag)


class SubmitJob(Command, tag="submit"):
    task_id: str


class CancelJob(Command, tag="cancel"):
    reason: str = "cancelled by user"


class DeleteJob(Command, tag="delete"):
    pass


class PauseJob(Command, tag="pause"):
    pass


class ResumeJob(Command, tag="resume"):
    pass


AnyCommand = SubmitJob | CancelJob | DeleteJob | PauseJob | ResumeJob

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyCommand] = msgspec.json.Decoder(AnyCommand)


def encode_command(command: Command) -> bytes:
    return _encoder.encode(command)


def decode_command(data: bytes | str) -> AnyCommand:
    return _decoder.decode(data)


async def send_command(client: Any, command: Command) -> str:
    """Append a command to the commands stream and return its id.

    A cancel or delete also sets the job's cancel flag, in the same transaction, so a worker
    that picks the job up later (or that was not listening yet) never starts it.
    """
    from shared import keys

    pipe = client.pipeline(transaction=True)
    if isinstance(command, CancelJob | DeleteJob):
        pipe.set(keys.cancel_flag(command.job_id), command.type_name(), ex=7 * 24 * 3600)
    pipe.xadd(
        keys.COMMANDS_STREAM,
        {"job": command.job_id, "data": encode_command(command)},
        maxlen=keys.COMMANDS_MAXLEN,
        approximate=True,
    )
    results = await pipe.execute()
    event_id = results[-1]
    return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

"""Commands: what the API asks of the workers, sent over the `commands` Redis Stream.

Workers read the stream without a consumer group, so every worker sees every command (a cancel
must reach whichever worker runs the job). Submissions are also enqueued on the arq queue,
which hands each job to exactly one worker.
"""

from __future__ import annotations

import time

import msgspec

SCHEMA_VERSION = 1


class Command(msgspec.Struct, tag_field="type", kw_only=True):
    job_id: str
    ts: float = msgspec.field(default_factory=time.time)
    v: int = SCHEMA_VERSION


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

"""A queued job's place in the queue and what it waits for.

arq keeps a task in its queue (a sorted set, scored by when it may start) until the task
ends, and marks a task a worker has taken with an in-progress key. The tasks still waiting
are the queue's members without that key, in score order: a job's position is its task's
place among them (1: next). What it waits for comes from the connected workers: none at all,
none that can run its config, the jobs ahead of it, or a free worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
from arq.constants import in_progress_key_prefix

from shared import keys, workers
from shared.capabilities import WorkerInfo, refusal
from shared.config import TrainingConfig
from shared.jobs import job_config
from shared.status import JobStatus


@dataclass(frozen=True, slots=True)
class QueuePlace:
    position: int | None
    """1 for the next task to be taken; None when the job's task is not (or no longer) waiting."""
    waiting: int
    """How many tasks wait in all."""
    waiting_for: str
    """What the job waits for, in a few words."""

    def fields(self) -> dict[str, Any]:
        """The job's REST and WebSocket fields."""
        return {
            "queue_position": self.position,
            "queue_length": self.waiting,
            "waiting_for": self.waiting_for,
        }


NOT_QUEUED: dict[str, Any] = {"queue_position": None, "queue_length": None, "waiting_for": None}
"""The fields of a job that is not waiting in the queue."""


async def waiting_tasks(client: aredis.Redis) -> list[str]:
    """Ids of the tasks in the queue that no worker has taken yet, in the order they go."""
    members = [
        m.decode() if isinstance(m, bytes) else str(m)
        for m in await client.zrange(keys.ARQ_QUEUE, 0, -1)
    ]
    if not members:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for task_id in members:
            pipe.exists(in_progress_key_prefix + task_id)
        taken = await pipe.execute()
    return [task_id for task_id, busy in zip(members, taken, strict=True) if not busy]


def waiting_for(position: int | None, config: TrainingConfig, workers: Sequence[WorkerInfo]) -> str:
    if not workers:
        return "a worker: none is connected; it starts when one joins"
    refusals = [refusal(w, config) for w in workers]
    capable = [w for w, r in zip(workers, refusals, strict=True) if r is None]
    if not capable:
        fields = sorted({r.field for r in refusals if r is not None})
        return f"a worker that can run it: no connected worker offers its {' and '.join(fields)}"
    if position is not None and position > 1:
        ahead = position - 1
        return f"{ahead} job{'s' if ahead > 1 else ''} ahead of it"
    if not any(w.free_slots for w in capable):
        return f"a free worker: all {len(capable)} that can run it are busy"
    return "a worker to take it"


async def place(
    client: aredis.Redis, task_id: str | None, config: TrainingConfig, workers: Sequence[WorkerInfo]
) -> QueuePlace:
    """Where the job of `task_id` stands in the queue, and what it waits for."""
    waiting = await waiting_tasks(client)
    position = waiting.index(task_id) + 1 if task_id in waiting else None
    return QueuePlace(position, len(waiting), waiting_for(position, config, workers))


async def queue_fields(client: aredis.Redis, job: Mapping[str, Any]) -> dict[str, Any]:
    """`queue_position`, `queue_length` and `waiting_for` of a job (a row, or a live state
    with its `config` and `celery_task_id`): None unless it is queued."""
    if job.get("status") != JobStatus.QUEUED or job.get("config") is None:
        return dict(NOT_QUEUED)
    config = job_config(job)
    found = await place(client, job.get("celery_task_id"), config, await workers.connected(client))
    return found.fields()

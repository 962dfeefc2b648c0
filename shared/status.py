"""Job statuses and the one rule about them: transitions only move forward."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
)
ACTIVE: frozenset[JobStatus] = frozenset(
    {JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED}
)

# Pausing and resuming move between RUNNING and PAUSED; everything else only moves up the ranks.
_RANK = {
    JobStatus.PENDING: 0,
    JobStatus.QUEUED: 1,
    JobStatus.RUNNING: 2,
    JobStatus.PAUSED: 2,
    JobStatus.COMPLETED: 3,
    JobStatus.FAILED: 3,
    JobStatus.CANCELLED: 3,
}


def can_transition(current: JobStatus | str, new: JobStatus | str) -> bool:
    """True when a job in `current` may move to `new` (a repeat of the same status is allowed).

    A finished job never changes again, so a late `running` or a repeated `completed` cannot
    undo a cancellation.
    """
    current, new = JobStatus(current), JobStatus(new)
    if current == new:
        return current not in TERMINAL
    if current in TERMINAL:
        return False
    return _RANK[new] >= _RANK[current]


def rank(status: JobStatus | str) -> int:
    """How far along a status is: pending 0, queued 1, running and paused 2, terminal 3."""
    return _RANK[JobStatus(status)]

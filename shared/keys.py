"""Every Redis key and channel name, in one place."""

from __future__ import annotations

PREFIX = "heimdall"

EVENTS_STREAM = f"{PREFIX}:events"
"""All jobs' events; consumed by the recorders' group, trimmed only below what is persisted."""

RECORDER_GROUP = "recorders"

COMMANDS_STREAM = f"{PREFIX}:commands"
"""Commands from the API to the workers (see shared/commands.py)."""

COMMANDS_MAXLEN = 10_000

ARQ_QUEUE = f"{PREFIX}:queue"
"""The arq queue that hands each training job to one worker."""


def job_stream(job_id: str) -> str:
    """One job's events, a bounded window kept for resume and replay."""
    return f"{PREFIX}:job:{job_id}:events"


def job_channel(job_id: str) -> str:
    """Pub/sub channel with one job's live events."""
    return f"{PREFIX}:job:{job_id}:live"


def cancel_flag(job_id: str) -> str:
    """Set on cancel or delete, so a worker that picks the job up later never starts it."""
    return f"{PREFIX}:job:{job_id}:cancel"


def pause_flag(job_id: str) -> str:
    """Set on pause, cleared on resume: a worker that picks the job up meanwhile pauses it."""
    return f"{PREFIX}:job:{job_id}:pause"


def lease(job_id: str) -> str:
    """Held (SET NX with a short TTL, refreshed every second) by the one worker training the
    job; when it expires the worker is presumed lost."""
    return f"{PREFIX}:job:{job_id}:lease"


def recoveries(job_id: str) -> str:
    """How often the job was recovered from a lost worker."""
    return f"{PREFIX}:job:{job_id}:recoveries"


ACTIVE_JOBS = f"{PREFIX}:active-leases"
"""Hash: job id → the worker (name) that leased it and has not yet left it cleanly; the
reapers watch these jobs' leases and name the worker when one is lost."""


def final(job_id: str) -> str:
    """The job's final status, claimed once (SET NX) by whoever emits its terminal event first;
    see shared/emit.py. Kept as long as the job."""
    return f"{PREFIX}:job:{job_id}:final"


DELETED_JOBS = f"{PREFIX}:deleted-jobs"
"""Sorted set: ids of deleted jobs (score: deletion time, ms), kept `DELETED_RETENTION_S`.
Every script that writes a key naming a job checks it first, so a straggler (a worker that
has not heard of the delete yet, a reaper mid-sweep) cannot bring a deleted job's keys back."""

DELETED_RETENTION_S = 7 * 24 * 3600


def job_keys(job_id: str) -> list[str]:
    """Every key that names the job (what a delete removes)."""
    return [
        job_stream(job_id),
        final(job_id),
        cancel_flag(job_id),
        pause_flag(job_id),
        lease(job_id),
        recoveries(job_id),
    ]


def replay_channel(job_id: str) -> str:
    """Where `heimdall replay` re-emits a recorded job's events for a frontend to watch."""
    return f"{PREFIX}:replay:{job_id}:live"


WORKERS = f"{PREFIX}:workers"
"""Sorted set: id of every worker that announced itself (score: when its record expires, ms);
members whose record has expired are dropped by whoever lists the workers."""


def worker(worker_id: str) -> str:
    """A worker's heartbeat record (`shared.capabilities.WorkerInfo` as JSON), written with a
    TTL of `Settings.worker_ttl_s` and refreshed every `Settings.worker_heartbeat_s`: a worker
    that dies (even by SIGKILL) disappears when it expires."""
    return f"{PREFIX}:worker:{worker_id}"

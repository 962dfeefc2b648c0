"""asyncio helpers every long-running loop needs.

On Python 3.11 `asyncio.wait_for` returns the inner result when a cancellation and that result
arrive in the same loop iteration, and the cancellation is lost (fixed in 3.12). redis-py wraps
every command it sends in `wait_for` when a socket timeout is set, as all of ours are, so a task
cancelled while it talks to Redis can carry on as if nothing happened: a worker's lease
heartbeat, cancelled after its job, kept refreshing the lease for ever and the job never ended.
A loop that is stopped by cancellation calls `raise_if_cancelling()` after its Redis calls.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise CancelledError when the current task was asked to stop (even if a library
    swallowed the CancelledError it was sent)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError

"""Waiting out a store that is down: one backoff, one retry loop, for every service.

Redis or PostgreSQL may be restarting, or not up yet when a service starts (compose starts
services in any order). Every call that must outlive such a gap goes through `retry`, so
they all wait the same way — doubling delays up to a ceiling, logs that say what is retried
without flooding, a stop event that ends the wait at once — instead of each loop spelling
its own sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, overload

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

Transient = tuple[type[BaseException], ...] | Callable[[BaseException], bool]
"""Which failures are worth waiting out: exception classes, or a predicate."""


@dataclass
class Backoff:
    """Exponential delays: `initial_s`, doubled after every failure, at most `max_s`."""

    initial_s: float = 0.1
    max_s: float = 5.0
    failures: int = 0

    @property
    def delay_s(self) -> float:
        """The wait after the failures so far (the first failure waits `initial_s`)."""
        return min(self.initial_s * 2 ** max(self.failures - 1, 0), self.max_s)

    def failed(self) -> float:
        """Count one more failure; returns how long to wait before the next attempt."""
        self.failures += 1
        return self.delay_s

    def reset(self) -> None:
        """A success: the next failure starts from `initial_s` again."""
        self.failures = 0

    @property
    def worth_logging(self) -> bool:
        """Log the 1st, the 10th and every 50th failure, not each one of a long outage."""
        return self.failures in (1, 10) or self.failures % 50 == 0

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Sleep for the current delay, or until `stop` is set; True when stopped."""
        if stop is None:
            await asyncio.sleep(self.delay_s)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=self.delay_s)
        return stop.is_set()


def _is_transient(exc: BaseException, transient: Transient) -> bool:
    if isinstance(transient, tuple):
        return isinstance(exc, transient)
    return transient(exc)


@overload
async def retry(
    action: Callable[[], Awaitable[T]],
    *,
    what: str,
    transient: Transient,
    backoff: Backoff | None = ...,
    stop: None = ...,
    timeout_s: float | None = ...,
    on_failure: Callable[[BaseException], Awaitable[None]] | None = ...,
) -> T: ...


@overload
async def retry(
    action: Callable[[], Awaitable[T]],
    *,
    what: str,
    transient: Transient,
    backoff: Backoff | None = ...,
    stop: asyncio.Event,
    timeout_s: float | None = ...,
    on_failure: Callable[[BaseException], Awaitable[None]] | None = ...,
) -> T | None: ...


async def retry(
    action: Callable[[], Awaitable[T]],
    *,
    what: str,
    transient: Transient,
    backoff: Backoff | None = None,
    stop: asyncio.Event | None = None,
    timeout_s: float | None = None,
    on_failure: Callable[[BaseException], Awaitable[None]] | None = None,
) -> T | None:
    """Await `action()` until it succeeds, waiting out `transient` failures.

    Other errors propagate at once. Returns None when `stop` is set before a success. With
    `timeout_s`, the last transient error is raised once that much time has passed.
    `on_failure` runs after each transient failure, before the wait (to drop a broken
    connection, say).
    """
    backoff = backoff or Backoff()
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while stop is None or not stop.is_set():
        try:
            result = await action()
        except Exception as exc:
            if not _is_transient(exc, transient):
                raise
            backoff.failed()
            if deadline is not None and loop.time() + backoff.delay_s > deadline:
                raise
            (log.warning if backoff.worth_logging else log.debug)(
                "unavailable, retrying",
                what=what,
                failures=backoff.failures,
                retry_in_s=round(backoff.delay_s, 2),
                error=f"{type(exc).__name__}: {exc}",
            )
            if on_failure is not None:
                await on_failure(exc)
            if await backoff.wait(stop):
                return None
            continue
        if backoff.failures:
            log.info("available again", what=what, failures=backoff.failures)
            backoff.reset()
        return result
    return None

"""The one retry-with-backoff helper (shared/retry.py) and its use in waiting for PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from support import free_port, wait_for

from shared.db import wait_for_database
from shared.retry import Backoff, retry
from shared.settings import Settings


def test_backoff_doubles_up_to_its_ceiling_and_resets() -> None:
    backoff = Backoff(initial_s=0.1, max_s=0.5)
    assert [backoff.failed() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.failed() == 0.1


def test_backoff_logs_the_first_tenth_and_every_fiftieth_failure() -> None:
    backoff = Backoff()
    logged = []
    for _ in range(100):
        backoff.failed()
        if backoff.worth_logging:
            logged.append(backoff.failures)
    assert logged == [1, 10, 50, 100]


class Flaky:
    """Fails with `error` the first `failures` calls, then answers."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.left = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise self.error
        return "answer"


async def test_transient_failures_are_waited_out() -> None:
    flaky = Flaky(3, ConnectionError("down"))
    seen: list[BaseException] = []

    async def note(exc: BaseException) -> None:
        seen.append(exc)

    result = await retry(
        flaky,
        what="flaky",
        transient=(ConnectionError,),
        backoff=Backoff(initial_s=0.001, max_s=0.002),
        on_failure=note,
    )
    assert result == "answer" and flaky.calls == 4 and len(seen) == 3


async def test_other_errors_propagate_at_once() -> None:
    flaky = Flaky(1, KeyError("bug"))
    with pytest.raises(KeyError):
        await retry(flaky, what="flaky", transient=lambda e: isinstance(e, ConnectionError))
    assert flaky.calls == 1


async def test_a_stop_ends_the_wait_with_none() -> None:
    stop = asyncio.Event()
    flaky = Flaky(10**9, ConnectionError("down"))
    task = asyncio.create_task(
        retry(flaky, what="flaky", transient=(ConnectionError,), backoff=Backoff(60, 60), stop=stop)
    )
    await wait_for(lambda: flaky.calls == 1, what="the first attempt")
    stop.set()  # during the 60 s wait
    assert await asyncio.wait_for(task, 5) is None
    assert flaky.calls == 1


async def test_past_the_timeout_the_last_error_is_raised() -> None:
    flaky = Flaky(10**9, ConnectionError("down"))
    with pytest.raises(ConnectionError):
        await retry(
            flaky,
            what="flaky",
            transient=(ConnectionError,),
            backoff=Backoff(0.01, 0.01),
            timeout_s=0.05,
        )
    assert flaky.calls > 1


async def test_wait_for_database(settings: Settings) -> None:
    assert settings.database_url
    await wait_for_database(settings.database_url, timeout=10)
    nobody = f"postgresql://heimdall@127.0.0.1:{free_port()}/heimdall"
    with pytest.raises(OSError):
        await wait_for_database(nobody, timeout=0.3)

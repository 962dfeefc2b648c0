"""The recorder: events stream → PostgreSQL, exactly once, in batches.

One consumer of the recorders' group reads batches (XREADGROUP COUNT/BLOCK), writes each in one
transaction (see `store.py`) and acks it only after the commit. While one batch is written the
next is already read and parsed. Every few seconds it takes over entries left pending by dead
consumers (XAUTOCLAIM) and trims the stream below the oldest entry not yet acked. A database
outage holds the current batch, unacked, until the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis_clients import async_client
from shared.settings import Settings

from .entries import parse_entry
from .settings import RecorderSettings
from .store import Prepared, Store
from .stream import EventStream, RawEntry
from .timescale import apply_policies

log = structlog.get_logger(__name__)

T = TypeVar("T")


def default_consumer_name() -> str:
    """Unique per process: host, pid and a random suffix (pids are reused across restarts)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


GC_THRESHOLD = (50_000, 20, 100)
"""Garbage-collector thresholds while recording. A batch allocates tens of thousands of
short-lived row tuples; with the default (700, 10, 10) collections took a third of the
recorder's CPU time."""


@contextlib.contextmanager
def tuned_gc() -> Iterator[None]:
    """Run with `GC_THRESHOLD`, restoring the previous thresholds afterwards."""
    previous = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


PREPARE_SLICE = 25
"""Entries parsed between two yields to the event loop while a batch is prepared."""


async def prepare(raw: list[RawEntry]) -> tuple[list[bytes], Prepared]:
    """Parse entries and build their rows; returns every id to ack and the batch to write.

    Runs beside the write of the previous batch, so it yields to the event loop every few
    entries: the database must never wait for the next chunk of a COPY while this parses.
    """
    ids: list[bytes] = []
    batch = Prepared([])
    for n, (entry_id, fields) in enumerate(raw, 1):
        ids.append(entry_id)
        try:
            batch.add(parse_entry(entry_id, fields))
        except ValueError as exc:  # not a stream id: cannot happen with a real stream
            log.error("unparseable stream entry", entry_id=str(entry_id), error=str(exc))
        if n % PREPARE_SLICE == 0:
            await asyncio.sleep(0)
    return ids, batch


class Recorder:
    """The consume → write → ack loop of one consumer."""

    def __init__(
        self, stream: EventStream, store: Store, settings: RecorderSettings, stop: asyncio.Event
    ) -> None:
        self.stream = stream
        self.store = store
        self.settings = settings
        self.stop = stop
        self.events = 0
        self.metrics = 0
        self._ahead: asyncio.Task[tuple[list[bytes], Prepared] | None] | None = None

    async def _redis(self, what: str, action: Callable[[], Awaitable[T]]) -> T | None:
        """Await a Redis call, waiting out connection failures; None when stopped first."""
        delay = self.settings.retry_initial_s
        failures = 0
        while not self.stop.is_set():
            try:
                return await action()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                failures += 1
                if failures in (1, 10) or failures % 50 == 0:
                    log.warning(
                        "redis unavailable, retrying",
                        what=what,
                        failures=failures,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=delay)
                delay = min(delay * 2, self.settings.retry_max_s)
        return None

    async def handle(self, raw: list[RawEntry]) -> bool:
        """Write and ack one batch; False when stopped before it was persisted (not acked)."""
        ids, batch = await prepare(raw)
        return await self.commit(ids, batch)

    def _read_ahead(self) -> None:
        """Read and parse the next batch while the database works on this one."""
        if self._ahead is None and not self.stop.is_set():
            self._ahead = asyncio.create_task(self._read(1))

    async def commit(self, ids: list[bytes], batch: Prepared, *, ahead: bool = False) -> bool:
        if ahead:
            self._read_ahead()
        result = await self.store.write_batch(batch, self.stop)
        if result is None:
            return False
        await self._redis("xack", lambda: self.stream.ack(ids))
        self.events += result.events
        self.metrics += result.metrics
        log.debug(
            "batch recorded",
            entries=len(ids),
            events=result.events,
            metrics=result.metrics,
            jobs=result.jobs,
        )
        return True

    async def claim_abandoned(self) -> int:
        """Finish the entries of dead consumers; returns how many were claimed."""
        cursor, claimed = "0-0", 0
        while not self.stop.is_set():
            reply = await self._redis("xautoclaim", functools.partial(self.stream.claim, cursor))
            if reply is None:
                break
            cursor, entries = reply
            if entries:
                claimed += len(entries)
                log.info(
                    "claimed abandoned entries",
                    count=len(entries),
                    first=entries[0][0].decode(),
                    last=entries[-1][0].decode(),
                )
                if not await self.handle(entries):
                    break
            if cursor in ("0-0", "0"):
                break
        return claimed

    async def housekeeping(self) -> None:
        try:
            await self.stream.trim()
            await self.stream.forget_dead_consumers()
        except RedisError as exc:
            log.warning("stream housekeeping failed", error=f"{type(exc).__name__}: {exc}")

    async def _read(self, block_ms: int) -> tuple[list[bytes], Prepared] | None:
        raw = await self._redis("xreadgroup", lambda: self.stream.read(block_ms))
        if not raw:
            return None
        return await prepare(raw)

    async def run(self) -> None:
        """Consume until `stop` is set; the batch in hand is finished first."""
        await self._redis("create group", self.stream.ensure_group)
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        next_trim = loop.time() + self.settings.trim_interval_s
        try:
            while not self.stop.is_set():
                now = loop.time()
                # Housekeeping also runs under sustained load, with a read-ahead in flight: its
                # entries are pending, so neither claimed by peers too early nor trimmed.
                if now >= next_claim:
                    await self.claim_abandoned()
                    next_claim = loop.time() + self.settings.claim_interval_s
                if now >= next_trim:
                    await self.housekeeping()
                    next_trim = loop.time() + self.settings.trim_interval_s
                if self._ahead is not None:
                    batch, self._ahead = await self._ahead, None
                else:
                    until = min(next_claim, next_trim) - loop.time()
                    block = int(max(0.001, min(self.settings.block_ms / 1000, until)) * 1000)
                    batch = await self._read(block)
                if batch is None:
                    continue
                if not await self.commit(*batch, ahead=True):
                    break
        finally:
            if self._ahead is not None:
                # Entries already delivered to this consumer are finished before it stops; if
                # that fails they stay pending and a peer or a successor claims them.
                with contextlib.suppress(Exception):
                    pending, self._ahead = await self._ahead, None
                    if pending is not None:
                        await self.commit(*pending)


async def run_recorder(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    consumer: str | None = None,
    recorder_settings: RecorderSettings | None = None,
) -> None:
    """Run the recorder until `stop` is set (or SIGTERM/SIGINT when no `stop` is given).

    `settings` must carry both store URLs. `recorder_settings` (default: the defaults) is
    loaded from the environment by the caller (the CLI), never here.
    """
    if not settings.redis_url or not settings.database_url:
        raise ValueError("the recorder needs settings.redis_url and settings.database_url")
    rs = recorder_settings or RecorderSettings()
    consumer = consumer or default_consumer_name()
    with structlog.contextvars.bound_contextvars(consumer=consumer), tuned_gc():
        await _run(settings, rs, consumer, stop)


async def _run(
    settings: Settings, rs: RecorderSettings, consumer: str, stop: asyncio.Event | None
) -> None:
    assert settings.redis_url and settings.database_url
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    client = async_client(settings.redis_url, settings.redis_timeout_s, block_s=rs.block_ms / 1000)
    store = Store(settings.database_url, rs)
    recorder = Recorder(EventStream(client, consumer, rs), store, rs, stop)
    started = time.monotonic()
    try:
        log.info("recorder starting", batch_size=rs.batch_size, claim_idle_ms=rs.claim_idle_ms)

        async def policies(conn: asyncpg.Connection) -> list[str]:
            return await apply_policies(
                conn,
                retention_days=rs.metrics_retention_days,
                compress_after_days=rs.metrics_compress_after_days,
            )

        try:
            await store.run("start-up", policies, stop)
        except asyncpg.PostgresError as exc:  # a policy is an optimisation, not a reason to stop
            log.error("metrics policies not applied", error=f"{type(exc).__name__}: {exc}")
        await recorder.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await store.close()
        await client.aclose()
        log.info(
            "recorder stopped",
            events=recorder.events,
            metrics=recorder.metrics,
            uptime_s=round(time.monotonic() - started, 1),
        )

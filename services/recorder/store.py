"""Writing a batch of entries to PostgreSQL: one transaction, set-based, idempotent.

Per batch: the events go in with one INSERT ... SELECT FROM unnest(...) ... ON CONFLICT DO
NOTHING RETURNING event_id; only events that this transaction inserted get their metric rows
(one COPY straight into training_metrics) and count in the job projection. An event already in
training_events was fully written by an earlier transaction — the same one that wrote its rows —
so a redelivered batch writes nothing twice, and two recorders racing on the same entry are
serialised by the primary key. The same new rows are folded into the read-optimised series
(`series.py`), and the new events into their jobs' rows (`projection.py`), in the same
transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import structlog

from shared.db import connect, migrate

from . import evaluations, series
from .entries import METRIC_COLUMNS, Entry, MetricRow, metric_rows
from .projection import project
from .settings import RecorderSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")

INSERT_EVENTS_SQL = """
INSERT INTO training_events
    (event_id, id_ms, id_seq, training_job_id, type, timestamp, payload)
SELECT s.event_id, s.id_ms, s.id_seq, s.job_id, s.type, s.ts, s.payload::jsonb
FROM unnest($1::text[], $2::int8[], $3::int4[], $4::uuid[], $5::text[], $6::timestamp[],
            $7::text[]) AS s(event_id, id_ms, id_seq, job_id, type, ts, payload)
WHERE EXISTS (SELECT 1 FROM training_jobs j WHERE j.id = s.job_id)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

# SQLSTATE classes worth waiting out: connection (08), transaction rollback: deadlock and
# serialisation (40), insufficient resources (53), operator intervention: shutdown (57),
# system error (58). A foreign-key violation means a job was deleted while we wrote; the retry
# skips its events.
_TRANSIENT_CLASSES = {"08", "40", "53", "57", "58"}
_TRANSIENT_STATES = {"23503"}


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed when tried again later (store down, deadlock...)."""
    if isinstance(exc, asyncpg.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | ConnectionError)


class _Permanent(Exception):
    """Carries an error of the action itself (not of connecting) out of the retry loop."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class Prepared:
    """A batch parsed and turned into rows, ready to write."""

    entries: list[Entry]
    rows: dict[str, list[MetricRow]] = field(default_factory=dict)
    """event_id → its metric rows."""

    @classmethod
    def of(cls, entries: list[Entry]) -> Prepared:
        batch = cls([])
        for entry in entries:
            batch.add(entry)
        return batch

    def add(self, entry: Entry) -> None:
        """Add one entry and its rows (entries that cannot be stored, and repeats, are left
        out; they are acked all the same)."""
        if not entry.storable or entry.event_id in self.rows:
            return
        try:
            self.rows[entry.event_id] = metric_rows(entry)
        except (OverflowError, ValueError) as exc:
            log.warning("metric rows skipped", event_id=entry.event_id, error=str(exc))
            self.rows[entry.event_id] = []
        self.entries.append(entry)


@dataclass(slots=True)
class WriteResult:
    events: int = 0
    """Events newly stored."""
    metrics: int = 0
    """Metric rows newly stored."""
    jobs: int = 0
    """Jobs whose projection this batch touched."""


class Store:
    """One connection to PostgreSQL, reopened as needed; writes batches."""

    def __init__(self, dsn: str, settings: RecorderSettings) -> None:
        self._dsn = dsn
        self._settings = settings
        self._conn: asyncpg.Connection | None = None
        self._migrated = False

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), timeout=2)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    async def connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        conn = await connect(self._dsn, timeout=5.0)
        try:
            if not self._migrated:
                await migrate(conn)
                self._migrated = True
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return conn

    async def retrying(
        self,
        what: str,
        action: Callable[[asyncpg.Connection], Awaitable[T]],
        stop: asyncio.Event,
    ) -> T | None:
        """Run `action` until it succeeds, waiting out transient failures with backoff.

        Returns None when `stop` is set first. Errors raised by `action` that are not transient
        propagate; failing to connect or migrate never does (nothing may be dropped because
        the database is unreachable or misconfigured), it is retried and logged.
        """
        delay = self._settings.retry_initial_s
        failures = 0
        while True:
            try:
                conn = await self.connection()
                try:
                    result = await action(conn)
                except Exception as exc:
                    if not is_transient(exc):
                        raise _Permanent(exc) from exc
                    raise
            except _Permanent as wrapped:
                raise wrapped.error from None
            except Exception as exc:
                failures += 1
                log_method = log.warning if failures in (1, 10) or failures % 50 == 0 else log.debug
                log_method(
                    "database unavailable, retrying",
                    what=what,
                    failures=failures,
                    retry_in_s=round(delay, 2),
                    error=f"{type(exc).__name__}: {exc}",
                )
                await self.close()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass
                if stop.is_set():
                    return None
                delay = min(delay * 2, self._settings.retry_max_s)
                continue
            if failures:
                log.info("database back", what=what, failures=failures)
            return result

    async def write(self, conn: asyncpg.Connection, batch: Prepared) -> WriteResult:
        """Write one batch in one transaction."""
        result = WriteResult()
        entries = batch.entries
        if not entries:
            return result
        async with conn.transaction():
            inserted = await conn.fetch(
                INSERT_EVENTS_SQL,
                [e.event_id for e in entries],
                [e.id_ms for e in entries],
                [e.id_seq for e in entries],
                [e.job_id for e in entries],
                [e.type for e in entries],
                [e.timestamp for e in entries],
                [e.payload for e in entries],
            )
            new_ids = {r[0] for r in inserted}
            if not new_ids:
                return result
            new = [e for e in entries if e.event_id in new_ids]
            repeats = await evaluations.record(conn, new)
            rows = [
                row
                for e in new
                if e.event_id not in repeats
                for row in batch.rows.get(e.event_id, ())
            ]
            if rows:
                await conn.copy_records_to_table(
                    "training_metrics", records=rows, columns=METRIC_COLUMNS
                )
                await series.record(conn, rows)
            jobs = await project(conn, new)
        result.events, result.metrics, result.jobs = len(new), len(rows), jobs
        return result

    async def write_batch(self, batch: Prepared, stop: asyncio.Event) -> WriteResult | None:
        """Write a batch, waiting out outages; None when stopped before it was written.

        A batch the database rejects for its content is written entry by entry, and an entry
        that still fails on its own is logged and dropped, so one bad event cannot wedge the
        stream.
        """

        async def whole(conn: asyncpg.Connection) -> WriteResult:
            return await self.write(conn, batch)

        try:
            return await self.retrying("write batch", whole, stop)
        except Exception as exc:
            log.warning(
                "batch rejected, writing its entries one by one",
                entries=len(batch.entries),
                error=f"{type(exc).__name__}: {exc}",
            )
        total = WriteResult()
        for entry in batch.entries:
            single = Prepared([entry], {entry.event_id: batch.rows.get(entry.event_id, [])})

            async def one(conn: asyncpg.Connection, single: Prepared = single) -> WriteResult:
                return await self.write(conn, single)

            try:
                result = await self.retrying("write entry", one, stop)
            except Exception as exc:
                log.error(
                    "event dropped: the database rejects it",
                    event_id=entry.event_id,
                    job_id=str(entry.job_id),
                    type=entry.type,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            if result is None:
                return None
            total.events += result.events
            total.metrics += result.metrics
            total.jobs += result.jobs
        return total

    async def run(
        self,
        what: str,
        action: Callable[[asyncpg.Connection], Awaitable[Any]],
        stop: asyncio.Event,
    ) -> Any:
        """Run any other database action with the same outage handling."""
        return await self.retrying(what, action, stop)

"""Prometheus metrics: HTTP latency from Litestar's middleware, and system gauges (jobs by
status, event stream size, recorder lag, events published/recorded, active WebSockets) read
from Redis and PostgreSQL at scrape time, so every process of the system is covered by one
scrape of the API without a metrics port in each of them."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from shared import keys
from shared.status import JobStatus

PROMETHEUS = PrometheusConfig(
    app_name="heimdall",
    prefix="heimdall",
    group_path=True,
    exclude=["/metrics", "/health"],
)

ACTIVE_WEBSOCKETS = Gauge(
    "heimdall_active_websockets", "WebSocket connections open on this API process"
)
JOBS = Gauge("heimdall_jobs", "Training jobs by status", ["status"])
STREAM_LENGTH = Gauge("heimdall_event_stream_length", "Entries in the global event stream")
EVENTS_PUBLISHED = Gauge(
    "heimdall_events_published_total", "Events ever added to the global event stream"
)
EVENTS_RECORDED = Gauge(
    "heimdall_events_recorded_total", "Events the recorders have read and acknowledged"
)
RECORDER_LAG = Gauge(
    "heimdall_recorder_lag_events", "Events not yet persisted (undelivered plus pending)"
)


async def _refresh(state: State) -> None:
    res = state.resources
    async with res.db.acquire() as conn:
        counts = dict(await conn.fetch("SELECT status, count(*) FROM training_jobs GROUP BY 1"))
    for status in JobStatus:
        JOBS.labels(status=status.value).set(counts.get(status.value, 0))
    info: dict[Any, Any] = {}
    groups: list[dict[Any, Any]] = []
    if await res.redis.exists(keys.EVENTS_STREAM):
        info = await res.redis.xinfo_stream(keys.EVENTS_STREAM)
        groups = await res.redis.xinfo_groups(keys.EVENTS_STREAM)
    STREAM_LENGTH.set(info.get("length", 0))
    added = info.get("entries-added", 0)
    EVENTS_PUBLISHED.set(added)
    group = next((g for g in groups if _text(g.get("name")) == keys.RECORDER_GROUP), None)
    if group is None:
        EVENTS_RECORDED.set(0)
        RECORDER_LAG.set(added)
        return
    pending = int(group.get("pending") or 0)
    lag = group.get("lag")
    read = group.get("entries-read")
    undelivered = int(lag) if lag is not None else 0
    EVENTS_RECORDED.set(max(0, int(read or 0) - pending))
    RECORDER_LAG.set(undelivered + pending)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@get("/metrics", tags=["operations"], summary="Prometheus metrics", include_in_schema=False)
async def metrics(state: State) -> Response[bytes]:
    await _refresh(state)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

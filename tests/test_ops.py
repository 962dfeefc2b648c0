"""Operations: Prometheus metrics, body size limit, CORS allow-list."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import redis.asyncio as aredis
from litestar.testing import AsyncTestClient

from services.api.app import create_app
from shared import keys
from shared.settings import Settings


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == name:
            return float(value)
    raise AssertionError(f"{name} not in metrics")


async def test_metrics_report_jobs_streams_and_recorder_lag(
    settings: Settings, redis_client: aredis.Redis
) -> None:
    async with AsyncTestClient(app=create_app(settings)) as client:
        for _ in range(2):
            resp = await client.post("/api/v1/training/jobs", json={"job_name": "m"})
            assert resp.status_code == 201
        text = (await client.get("/metrics")).text
        assert _sample(text, 'heimdall_jobs{status="queued"}') == 2
        assert _sample(text, 'heimdall_jobs{status="running"}') == 0
        # Two JobQueued events on the stream, no recorder group yet: both are lag.
        assert _sample(text, "heimdall_event_stream_length") == 2
        assert _sample(text, "heimdall_recorder_lag_events") == 2
        await redis_client.xgroup_create(keys.EVENTS_STREAM, keys.RECORDER_GROUP, id="0")
        entries = await redis_client.xreadgroup(
            keys.RECORDER_GROUP, "t", {keys.EVENTS_STREAM: ">"}, count=1
        )
        await redis_client.xack(keys.EVENTS_STREAM, keys.RECORDER_GROUP, entries[0][1][0][0])
        text = (await client.get("/metrics")).text
        assert _sample(text, "heimdall_events_recorded_total") == 1
        assert _sample(text, "heimdall_recorder_lag_events") == 1
        assert "heimdall_request_duration_seconds_bucket" in text


async def test_body_size_limit(settings: Settings) -> None:
    async with AsyncTestClient(app=create_app(replace(settings, max_body_bytes=2048))) as client:
        big = {"job_name": "x", "config": {"dataset": "d"}, "pad": "x" * 4096}
        resp = await client.post("/api/v1/training/jobs", json=big)
        assert resp.status_code == 413
        assert (await client.get("/api/v1/training/jobs")).json()["total"] == 0


async def test_cors_allow_list(settings: Settings) -> None:
    app = create_app(replace(settings, cors_origins=("https://dash.example",)))
    async with AsyncTestClient(app=app) as client:
        ok: Any = await client.get(
            "/api/v1/training/jobs", headers={"origin": "https://dash.example"}
        )
        assert ok.headers.get("access-control-allow-origin") == "https://dash.example"
        other = await client.get(
            "/api/v1/training/jobs", headers={"origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers

"""Liveness and readiness, for load balancers, compose health checks and `heimdall up`."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State

from services.api.resources import resources_of


@get("/health", tags=["operations"], summary="The process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", tags=["operations"], summary="Redis and the database are reachable")
async def ready(state: State) -> Response[dict[str, Any]]:
    res = resources_of(state)
    checks: dict[str, str] = {}
    try:
        await res.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is reported
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        async with res.db.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return Response(
        {"status": "ready" if ok else "not ready", **checks}, status_code=200 if ok else 503
    )

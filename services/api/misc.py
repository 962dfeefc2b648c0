"""Datasets, health and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.params import FromPath

from services.api.errors import NotFound
from services.api.resources import Resources
from shared import datasets


def _res(state: State) -> Resources:
    return state.resources  # type: ignore[no-any-return,unused-ignore]


class DatasetsController(Controller):
    path = "/api/v1/datasets"
    tags = ["datasets"]

    @get("/", summary="Every dataset with its summary")
    async def list_datasets(self, state: State) -> dict[str, Any]:
        async with _res(state).db.acquire() as conn:
            names = await datasets.list_names(conn)
            return {"datasets": [await datasets.summarize(conn, n) for n in names]}

    @get("/{name:str}", summary="One dataset: counts per class, approved count, SNR range")
    async def get_dataset(self, name: FromPath[str], state: State) -> dict[str, Any]:
        async with _res(state).db.acquire() as conn:
            summary = await datasets.summarize(conn, name)
        if summary is None:
            raise NotFound(f"no dataset named {name!r}")
        return summary


@get("/health", tags=["operations"], summary="The process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", tags=["operations"], summary="Redis and the database are reachable")
async def ready(state: State) -> Response[dict[str, Any]]:
    res = _res(state)
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

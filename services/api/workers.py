"""`GET /api/v1/workers`: the connected workers and what each can run."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, get
from litestar.datastructures import State

from services.api import views
from services.api.resources import resources_of
from shared import workers
from shared.capabilities import WorkerInfo


def worker_view(info: WorkerInfo) -> dict[str, Any]:
    """One worker on the wire: its record, timestamps in ISO form, and its free slots."""
    out = msgspec.structs.asdict(info)
    out.pop("v", None)
    out["started_at"] = views.iso(info.started_at)
    out["seen_at"] = views.iso(info.seen_at)
    out["jobs_running"] = len(info.running)
    out["free_slots"] = info.free_slots
    return out


class WorkersController(Controller):
    path = "/api/v1/workers"
    tags = ["workers"]

    @get("/", summary="Connected workers and what they can run")
    async def list_workers(self, state: State) -> dict[str, Any]:
        found = await workers.connected(resources_of(state).redis)
        return {"workers": [worker_view(w) for w in found], "total": len(found)}

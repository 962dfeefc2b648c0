"""The dataset routes: summaries of the recordings a job can train on."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import FromPath

from services.api.resources import resources_of
from shared import datasets
from shared.errors import NotFound


class DatasetsController(Controller):
    path = "/api/v1/datasets"
    tags = ["datasets"]

    @get("/", summary="Every dataset with its summary")
    async def list_datasets(self, state: State) -> dict[str, Any]:
        async with resources_of(state).db.acquire() as conn:
            names = await datasets.list_names(conn)
            return {"datasets": [await datasets.summarize(conn, n) for n in names]}

    @get("/{name:str}", summary="One dataset: counts per class, approved count, SNR range")
    async def get_dataset(self, name: FromPath[str], state: State) -> dict[str, Any]:
        async with resources_of(state).db.acquire() as conn:
            summary = await datasets.summarize(conn, name)
        if summary is None:
            raise NotFound(f"no dataset named {name!r}")
        return summary

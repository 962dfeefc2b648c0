"""The dataset routes: summaries of the recordings a job can train on."""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import FromPath

from services.api.resources import resources_of
from shared import datasets
from shared.config import TrainingConfig
from shared.dataset_names import InvalidDatasetName, check_dataset_name
from shared.errors import InvalidInput, NotFound
from shared.splits import split_problem


async def check_split(conn: asyncpg.Connection, config: TrainingConfig) -> None:
    """Reject, naming `config.validation_split`, a split that would leave a known dataset's
    selection with nothing to validate on (the worker would fail the job at once)."""
    counts = await datasets.class_counts(
        conn, config.dataset, min_snr_db=config.min_snr_db, only_approved=config.only_approved
    )
    problem = split_problem(counts, config.validation_split)
    if problem:
        raise InvalidInput(f"config.validation_split: {problem}", "config.validation_split")


class DatasetsController(Controller):
    path = "/api/v1/datasets"
    tags = ["datasets"]

    @get("/", summary="Every dataset with its summary")
    async def list_datasets(self, state: State) -> dict[str, Any]:
        async with resources_of(state).db.acquire() as conn:
            names = await datasets.list_names(conn)
            return {"datasets": [await datasets.summarize(conn, n) for n in names]}

    @get(
        "/{name:str}",
        summary="One dataset: counts per class, approved count, SNR range, sample rates,"
        " channels (real / IQ) and durations",
    )
    async def get_dataset(self, name: FromPath[str], state: State) -> dict[str, Any]:
        try:
            check_dataset_name(name)
        except InvalidDatasetName as exc:
            raise InvalidInput(str(exc), "name") from None
        async with resources_of(state).db.acquire() as conn:
            summary = await datasets.summarize(conn, name)
        if summary is None:
            raise NotFound(f"no dataset named {name!r}")
        return summary

"""GET /training/jobs/{id}/evaluation: the per-class evaluation of a job's validation set (an
epoch's, the latest by default) and of its test set, as the recorder stored them
(`training_evaluations`)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import asyncpg
from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import FromPath, QueryParameter

from services.api.errors import InvalidInput, NotFound
from services.api.jobs import _job_or_404, _now, _res

_FIELDS = (
    "epoch, classes, confusion_matrix, per_class, accuracy_by_snr, accuracy, macro_f1, loss,"
    " samples"
)

SPLIT_SQL = (
    f"SELECT {_FIELDS} FROM training_evaluations WHERE training_job_id = $1 AND phase = $2"
    " AND ($3::int4 IS NULL OR epoch = $3) ORDER BY epoch DESC LIMIT 1"
)
EPOCHS_SQL = (
    "SELECT epoch, macro_f1 FROM training_evaluations WHERE training_job_id = $1"
    " AND phase = 'val' ORDER BY epoch"
)


def split_view(row: asyncpg.Record) -> dict[str, Any]:
    """One split as the endpoint shows it."""
    return {
        "epoch": row["epoch"],
        "accuracy": row["accuracy"],
        "macro_f1": row["macro_f1"],
        "loss": row["loss"],
        "samples": row["samples"],
        "confusion_matrix": row["confusion_matrix"],
        "per_class": row["per_class"],
        "accuracy_by_snr": row["accuracy_by_snr"],
    }


async def evaluation_of(
    conn: asyncpg.Connection, job_id: str, epoch: int | None
) -> tuple[list[str], dict[str, Any], list[asyncpg.Record]]:
    """(classes, splits, (epoch, macro_f1) of every validation evaluation) of a job."""
    job = uuid.UUID(job_id)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        val = await conn.fetchrow(SPLIT_SQL, job, "val", epoch)
        test = await conn.fetchrow(SPLIT_SQL, job, "test", None)
        epochs = await conn.fetch(EPOCHS_SQL, job)
    splits = {name: split_view(row) for name, row in (("val", val), ("test", test)) if row}
    classes: list[str] = next((row["classes"] for row in (val, test) if row), [])
    return classes, splits, epochs


class EvaluationController(Controller):
    path = "/api/v1/training/jobs"
    tags = ["training jobs"]

    @get("/{job_id:str}/evaluation", summary="Confusion matrix and per-class metrics")
    async def evaluation(
        self,
        job_id: FromPath[str],
        state: State,
        epoch: Annotated[
            int | None,
            QueryParameter(ge=1, le=1000, description="the validation split of this epoch"),
        ] = None,
    ) -> dict[str, Any]:
        """`splits.val` is the latest epoch's validation (or `epoch`'s), `splits.test` the
        test set's, evaluated once with the best epoch's weights (absent when `test_split` is
        0). `val_epochs` lists the epochs that have a validation evaluation, `val_macro_f1` their
        macro-F1 (for charts)."""
        res = _res(state)
        job_id, row = await _job_or_404(res, job_id)
        now = await _now(res, row)
        total = now.get("total_epochs") or 0
        if epoch is not None and total and epoch > total:
            raise InvalidInput(f"epoch: {epoch} is beyond the job's {total} epochs", "epoch")
        async with res.db.acquire() as conn:
            classes, splits, epochs = await evaluation_of(conn, job_id, epoch)
        if epoch is not None and "val" not in splits:
            raise NotFound(f"job {job_id} has no validation evaluation of epoch {epoch} (yet)")
        return {
            "job_id": job_id,
            "classes": classes,
            "splits": splits,
            "val_epochs": [r["epoch"] for r in epochs],
            "val_macro_f1": [r["macro_f1"] for r in epochs],
            "best": {
                "epoch": now.get("best_epoch"),
                "monitor": now.get("monitor"),
                "value": now.get("best_value"),
            },
        }

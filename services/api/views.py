"""How jobs, metrics and statuses look on the wire (the seed's formats, plus extensions)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

METRIC_FIELDS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "learning_rate")


def iso(value: datetime | float | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a Z; naive datetimes are UTC already."""
    if value is None:
        return None
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    elif value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def now_iso() -> str:
    return iso(datetime.now(UTC)) or ""


def job_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """One job in a list: the seed's fields first, then what a dashboard also wants."""
    return {
        "id": str(row["id"]),
        "job_name": row["job_name"],
        "status": row["status"],
        "current_epoch": row["current_epoch"],
        "total_epochs": row["total_epochs"],
        "progress_percent": row["progress_percent"],
        "train_loss": row["train_loss"],
        "val_loss": row["val_loss"],
        "train_accuracy": row["train_accuracy"],
        "val_accuracy": row["val_accuracy"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "completed_at": iso(row["completed_at"]),
        "model_architecture": row["model_architecture"],
        "dataset": row["dataset"],
        "error_message": row["error_message"],
    }


def job_detail(row: Mapping[str, Any]) -> dict[str, Any]:
    """Every column of the job, with the seed's `metrics` object of the latest values."""
    out = dict(job_summary(row))
    out.update(
        {
            "celery_task_id": row["celery_task_id"],
            "config": row["config"],
            "learning_rate": row["learning_rate"],
            "gradient_norm": row["gradient_norm"],
            "best_epoch": row["best_epoch"],
            "best_val_loss": row["best_val_loss"],
            "checkpoint_path": row["checkpoint_path"],
            "onnx_model_path": row["onnx_model_path"],
            "mlflow_run_id": row["mlflow_run_id"],
            "dataset_size": row["dataset_size"],
            "train_samples": row["train_samples"],
            "val_samples": row["val_samples"],
            "test_samples": row.get("test_samples"),
            "monitor": row.get("monitor"),
            "best_value": row.get("best_value"),
            "current_batch": row["current_batch"],
            "total_batches": row["total_batches"],
            "last_event_id": row["last_event_id"],
            "metrics": {name: row[name] for name in METRIC_FIELDS},
        }
    )
    return out


def created_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's response to POST /training/jobs."""
    return {
        "id": str(row["id"]),
        "job_name": row["job_name"],
        "status": row["status"],
        "created_at": iso(row["created_at"]),
        "celery_task_id": row["celery_task_id"],
        "config": row["config"],
        "total_epochs": row["total_epochs"],
    }


def training_status(row: Mapping[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """The seed's `training_status` WebSocket message, plus event_id and batch progress."""
    return {
        "event": "training_status",
        "job_id": str(row["id"]),
        "status": row["status"],
        "current_epoch": row["current_epoch"],
        "total_epochs": row["total_epochs"],
        "progress_percent": row["progress_percent"],
        "metrics": {name: row[name] for name in METRIC_FIELDS},
        "error_message": row["error_message"],
        "timestamp": now_iso(),
        "event_id": event_id if event_id is not None else row["last_event_id"],
        "current_batch": row["current_batch"],
        "total_batches": row["total_batches"],
    }

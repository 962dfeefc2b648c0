"""The WebSocket messages, as JSON text: the seed's formats plus the contract's extensions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from services.api import views
from shared.events import EpochCompleted, EvaluationCompleted, JobWarning

_encoder = msgspec.json.Encoder()

EPOCH_FIELDS = tuple(
    name for name in EpochCompleted.__struct_fields__ if name not in ("job_id", "ts", "v")
)


def encode(message: Mapping[str, Any]) -> str:
    return _encoder.encode(message).decode()


def connected(job_id: str, replay: bool = False) -> str:
    what = "replay of training job" if replay else "training job"
    return encode(
        {
            "event": "connected",
            "job_id": job_id,
            "timestamp": views.now_iso(),
            "message": f"Connected to {what}",
        }
    )


def training_status(state: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> str:
    """The seed's `training_status`, with event_id, batch progress and the last batch's metrics,
    and `extra` (a job's queue fields)."""
    message = views.training_status(state, state["last_event_id"])
    message["batch_loss"] = state.get("batch_loss")
    message["batch_accuracy"] = state.get("batch_accuracy")
    if extra:
        message.update(extra)
    return encode(message)


def epoch_completed(event: EpochCompleted, event_id: str) -> str:
    """One epoch's full metrics row, so that a chart never misses an epoch."""
    message: dict[str, Any] = {"event": "epoch_completed", "job_id": event.job_id}
    message.update((name, getattr(event, name)) for name in EPOCH_FIELDS)
    message["timestamp"] = views.iso(event.ts)
    message["event_id"] = event_id
    return encode(message)


def warning(event: JobWarning, event_id: str) -> str:
    return encode(
        {
            "event": "warning",
            "job_id": event.job_id,
            "message": event.message,
            "timestamp": views.iso(event.ts),
            "event_id": event_id,
        }
    )


def evaluation(event: EvaluationCompleted, event_id: str) -> str:
    """A split's per-class evaluation (validation each epoch, the test set once), as GET
    .../evaluation shows a split, with its phase."""
    body = msgspec.to_builtins(event)
    for name in ("type", "ts", "v"):
        body.pop(name, None)
    message: dict[str, Any] = {"event": "evaluation", **body}
    message["timestamp"] = views.iso(event.ts)
    message["event_id"] = event_id
    return encode(message)


def pong() -> str:
    return encode({"event": "pong", "timestamp": views.now_iso()})


def error(detail: str, job_id: str | None = None) -> str:
    message: dict[str, Any] = {"event": "error", "message": detail, "timestamp": views.now_iso()}
    if job_id is not None:
        message["job_id"] = job_id
    return encode(message)

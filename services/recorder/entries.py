"""Stream entries as the recorder sees them, and the rows they become.

Every entry of the events stream is parsed once into an `Entry`. Entries that cannot be decoded
as a known event (bad JSON, a type from a newer schema) are kept when they still name a job and
carry a JSON object with a `type`, so that the event log stays complete; the rest are only
logged. Metric rows get deterministic ids (uuid5 of the event id and the point's index) and
timestamps taken from the event, so writing the same entry twice yields identical rows.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import structlog
from asyncpg.pgproto.pgproto import UUID as PgUUID

from shared.events import (
    AnyEvent,
    BatchProgress,
    EpochCompleted,
    EvaluationCompleted,
    decode_event,
    parse_event_id,
)
from shared.live_state import naive_utc

log = structlog.get_logger(__name__)

METRICS_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "heimdall:training_metrics")
"""Namespace of the metric rows' uuid5 ids; changing it would duplicate rows on replay."""

METRIC_COLUMNS = (
    "timestamp",
    "id",
    "training_job_id",
    "epoch",
    "batch",
    "train_loss",
    "val_loss",
    "train_accuracy",
    "val_accuracy",
    "learning_rate",
    "gradient_norm",
    "phase",
    "epoch_time_s",
)
"""Column order of the tuples `metric_rows` returns, as passed to COPY."""

MetricRow = tuple[Any, ...]


@dataclass(slots=True)
class Entry:
    """One stream entry, parsed."""

    event_id: str
    id_ms: int
    id_seq: int
    job_id: uuid.UUID | None
    """None when the entry names no valid job id; such entries are acked and skipped."""
    type: str | None
    """The event's tag; None when the payload is not a JSON object with a string `type`."""
    timestamp: datetime
    payload: str | None
    """The JSON text as emitted; None when it is not valid JSON."""
    event: AnyEvent | None
    """The decoded event; None for undecodable or unknown entries."""

    @property
    def key(self) -> tuple[int, int]:
        """Sort key: stream order."""
        return self.id_ms, self.id_seq

    @property
    def storable(self) -> bool:
        """Whether the entry belongs in training_events."""
        return self.job_id is not None and self.type is not None and self.payload is not None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _job_uuid(*candidates: Any) -> uuid.UUID | None:
    for candidate in candidates:
        if not candidate:
            continue
        try:
            return uuid.UUID(_text(candidate))
        except ValueError:
            continue
    return None


def _timestamp(ts: Any, id_ms: int) -> datetime:
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        try:
            return naive_utc(float(ts))
        except (OverflowError, ValueError):
            pass
    return naive_utc(id_ms / 1000)


def parse_entry(entry_id: Any, fields: dict[Any, Any] | None) -> Entry:
    """Parse one stream entry; never raises for bad content, only logs it."""
    event_id = _text(entry_id)
    id_ms, id_seq = parse_event_id(event_id)
    fields = fields or {}
    raw = fields.get(b"data", fields.get("data"))
    job_field = fields.get(b"job", fields.get("job"))
    data = raw if isinstance(raw, bytes) else _text(raw).encode()
    event: AnyEvent | None = None
    try:
        event = decode_event(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        decode_error = str(exc)
    else:
        job_id = _job_uuid(job_field, event.job_id)
        return Entry(
            event_id,
            id_ms,
            id_seq,
            job_id,
            _tag(event),
            _timestamp(event.ts, id_ms),
            data.decode("utf-8", errors="replace"),
            event,
        )

    # Not a known event: keep it in the log when it is at least a JSON object with a type.
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:
        obj = None
    payload = data.decode("utf-8", errors="replace") if obj is not None else None
    obj_map: dict[str, Any] = obj if isinstance(obj, dict) else {}
    type_ = obj_map.get("type")
    entry = Entry(
        event_id,
        id_ms,
        id_seq,
        _job_uuid(job_field, obj_map.get("job_id")),
        type_[:40] if isinstance(type_, str) and type_ else None,
        _timestamp(obj_map.get("ts"), id_ms),
        payload,
        None,
    )
    log.warning(
        "undecodable event",
        event_id=event_id,
        job_id=str(entry.job_id) if entry.job_id else None,
        type=entry.type,
        stored=entry.storable,
        error=decode_error,
    )
    return entry


def _tag(event: AnyEvent) -> str:
    return str(type(event).__struct_config__.tag)


# uuid5 sets the version nibble to 5 and the variant's top bits to 10.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def point_ids(event_id: str, count: int) -> list[str]:
    """`uuid5(METRICS_NAMESPACE, f"{event_id}/{i}")` for i in range(count), as hex strings,
    computed without rehashing the common prefix (this is the recorder's hottest loop)."""
    base = hashlib.sha1(METRICS_NAMESPACE.bytes + f"{event_id}/".encode())
    ids = []
    for i in range(count):
        h = base.copy()
        h.update(b"%d" % i)
        x = h.hexdigest()
        ids.append(f"{x[:12]}5{x[13:16]}{_VARIANT[x[16]]}{x[17:32]}")
    return ids


def metric_rows(entry: Entry) -> list[MetricRow]:
    """The training_metrics rows of one entry (empty for events that carry no metrics)."""
    event = entry.event
    if entry.job_id is None:
        return []
    # asyncpg's own UUID type skips a Python-level conversion per row when encoding.
    job = PgUUID(entry.job_id.bytes)
    match event:
        case BatchProgress(points=points):
            ids = point_ids(entry.event_id, len(points))
            return [
                (
                    naive_utc(p.ts),
                    ids[i],
                    job,
                    p.epoch,
                    p.batch,
                    p.loss,
                    None,
                    p.accuracy,
                    None,
                    p.learning_rate,
                    p.gradient_norm,
                    "train",
                    None,
                )
                for i, p in enumerate(points)
            ]
        case EpochCompleted():
            return [
                (
                    entry.timestamp,
                    uuid.uuid5(METRICS_NAMESPACE, f"{entry.event_id}/epoch"),
                    job,
                    event.epoch,
                    None,
                    event.train_loss,
                    event.val_loss,
                    event.train_accuracy,
                    event.val_accuracy,
                    event.learning_rate,
                    event.gradient_norm,
                    "epoch",
                    event.epoch_time_s,
                )
            ]
        case EvaluationCompleted(phase="test"):
            # The test set's loss and accuracy go in the held-out columns (val_*): the seed's
            # table has no others, and a chart of phase 'test' reads them like validation's.
            return [
                (
                    entry.timestamp,
                    uuid.uuid5(METRICS_NAMESPACE, f"{entry.event_id}/test"),
                    job,
                    event.epoch,
                    None,
                    None,
                    event.loss,
                    None,
                    event.accuracy,
                    None,
                    None,
                    "test",
                    None,
                )
            ]
    return []

"""Events: what happened to a job, as typed data.

One tagged msgspec Struct per event type, one union, one decoder built once. Worker, API and
recorder are deployed separately, so every event carries a schema version `v`, new fields get
defaults, and decoders ignore fields they do not know.

An event's id is the Redis stream id it was given when emitted (`<ms>-<seq>`); ids order events
globally and per job. See `shared/emit.py`.
"""

from __future__ import annotations

import time

import msgspec

from shared.errors import InvalidInput

SCHEMA_VERSION = 1


class Event(msgspec.Struct, tag_field="type", kw_only=True):
    """Fields every event has."""

    job_id: str
    ts: float = msgspec.field(default_factory=time.time)
    """Emission time, seconds since the epoch (UTC)."""
    v: int = SCHEMA_VERSION


class JobQueued(Event, tag="job_queued"):
    task_id: str
    total_epochs: int


class JobStarted(Event, tag="job_started"):
    worker: str = ""
    attempt: int = 1
    dataset_size: int = 0
    train_samples: int = 0
    val_samples: int = 0
    test_samples: int = 0
    num_classes: int = 0
    total_batches: int = 0
    """Training batches per epoch."""
    start_epoch: int = 1
    device: str = "cpu"
    seed: int | None = None
    """The seed in use: the config's, or the one drawn for the job (kept by every resume), so
    any run can be repeated from what the API shows."""
    warmup_steps: int = 0
    """Warm-up steps in use (`warmup_epochs` times `total_batches`, at most half the run)."""
    precision: str = "fp32"
    """`fp32`, `fp16` or `bf16` (the autocast dtype in use)."""
    threads: int = 0
    """Torch threads of the (rank 0) training process."""
    init_from_job: str | None = None
    """The job whose best weights this run started from."""
    head_reinitialised: bool = False
    """With `init_from_job`: the classes differed, so the head started fresh."""


class BatchPoint(msgspec.Struct, array_like=True):
    """One training batch, compact: [epoch, batch, loss, accuracy, learning_rate, grad_norm, ts]."""

    epoch: int
    batch: int
    loss: float
    accuracy: float
    learning_rate: float
    gradient_norm: float | None
    ts: float


class BatchProgress(Event, tag="batch_progress"):
    """Every training batch since the previous BatchProgress, emitted a few times per second."""

    epoch: int
    batch: int
    """The last batch covered (1-based)."""
    total_batches: int
    points: list[BatchPoint] = []


class EpochCompleted(Event, tag="epoch_completed"):
    epoch: int
    total_epochs: int
    train_loss: float
    val_loss: float | None
    train_accuracy: float
    val_accuracy: float | None
    learning_rate: float
    gradient_norm: float | None = None
    epoch_time_s: float = 0.0
    is_best: bool = False
    best_epoch: int | None = None
    best_val_loss: float | None = None
    """The validation loss of the best epoch (the monitored loss when it is `val_loss`)."""
    val_macro_f1: float | None = None
    monitor: str = "val_loss"
    """What picks the best epoch (the config's `monitor`; `train_loss` without validation)."""
    best_value: float | None = None
    """The monitored value of the best epoch."""


class CheckpointSaved(Event, tag="checkpoint_saved"):
    epoch: int
    path: str
    kind: str = "last"
    """`best` or `last` (or `pause`)."""


class JobCompleted(Event, tag="job_completed"):
    epochs_run: int
    best_epoch: int | None = None
    best_val_loss: float | None = None
    checkpoint_path: str | None = None
    onnx_model_path: str | None = None
    onnx_max_abs_diff: float | None = None
    stopped_early: bool = False
    monitor: str = "val_loss"
    best_value: float | None = None
    """The monitored value of `best_epoch` (see EpochCompleted.monitor)."""


class ClassMetrics(msgspec.Struct):
    """One class's metrics on a split."""

    precision: float
    recall: float
    f1: float
    support: int
    """Samples of the class in the split."""


class SnrBand(msgspec.Struct):
    """Accuracy on the split's samples whose `snr_db` lies in [snr_db_min, snr_db_max)."""

    snr_db_min: float
    snr_db_max: float
    accuracy: float
    support: int


class EvaluationCompleted(Event, tag="evaluation_completed"):
    """A split's per-class evaluation: validation after every epoch, the test set once after
    training (with the best epoch's weights; `epoch` is that epoch)."""

    phase: str
    """`val` or `test`."""
    epoch: int
    classes: list[str]
    confusion_matrix: list[list[int]]
    """Rows: true class; columns: predicted class; both in `classes` order."""
    per_class: dict[str, ClassMetrics]
    accuracy: float
    macro_f1: float
    accuracy_by_snr: list[SnrBand] = []
    """Bands of 5 dB that hold at least one sample (recordings without an SNR are left out)."""
    loss: float | None = None
    samples: int = 0


class JobFailed(Event, tag="job_failed"):
    error_message: str


class JobCancelled(Event, tag="job_cancelled"):
    reason: str = "cancelled by user"


class JobPaused(Event, tag="job_paused"):
    """Training stopped at a batch boundary with a full checkpoint; a resume continues from it."""

    checkpoint_path: str | None = None
    """The pause checkpoint; None when the job was paused before it ever started."""
    epoch: int = 0
    """The epoch the job resumes in (1-based; 0 before it started)."""
    batch: int = 0
    """Training batches of `epoch` already done (0: the epoch starts afresh)."""


class JobResumed(Event, tag="job_resumed"):
    """A paused job was queued again under a new queue task id."""

    task_id: str = ""


class JobRequeued(Event, tag="job_requeued"):
    """The job left its worker unfinished (the worker shut down, or was lost and its lease
    expired) and waits in the queue under `task_id` to resume from its latest checkpoint.
    The job's status does not change."""

    reason: str = ""
    task_id: str = ""
    recoveries: int = 0
    """How many times a lost worker's job has been recovered so far (0 for a shutdown)."""


class JobWarning(Event, tag="job_warning"):
    message: str


class QueuedUnrunnable(JobWarning, tag="queued_unrunnable"):
    """Queued with `?queue_anyway=true` although no connected worker can run it: it waits for
    a worker that can. A JobWarning, so every consumer of warnings shows it."""

    field: str = ""
    """The config field no connected worker satisfies (`accelerator`, `devices`, `pretrained`)."""


class TrackingLinked(Event, tag="tracking_linked"):
    """The job's runs in external trackers (TensorBoard folder, MLflow run)."""

    mlflow_run_id: str | None = None
    tensorboard_dir: str | None = None


AnyEvent = (
    JobQueued
    | JobStarted
    | BatchProgress
    | EpochCompleted
    | CheckpointSaved
    | JobCompleted
    | EvaluationCompleted
    | JobFailed
    | JobCancelled
    | JobPaused
    | JobResumed
    | JobRequeued
    | JobWarning
    | QueuedUnrunnable
    | TrackingLinked
)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> AnyEvent:
    """Decode one event; raises msgspec.DecodeError/ValidationError for unknown or bad data."""
    return _decoder.decode(data)


def status_of(event: Event) -> str | None:
    """The job status an event moves a job to, or None when it carries no status change."""
    match event:
        case JobQueued():
            return "queued"
        case JobStarted() | BatchProgress() | EpochCompleted() | JobResumed():
            return "running"
        case JobPaused():
            return "paused"
        case JobCompleted():
            return "completed"
        case JobFailed():
            return "failed"
        case JobCancelled():
            return "cancelled"
    return None


EVENT_ID_PART_MAX = 2**64 - 1
"""Redis stream ids are two unsigned 64-bit numbers; nothing larger is an event id."""


def parse_event_id(event_id: str) -> tuple[int, int]:
    """`"1732790000000-3"` → `(1732790000000, 3)`; `"17"` → `(17, 0)`, as Redis reads it.

    The one parser of event ids, for `?after=` on REST and WebSocket alike: anything but ASCII
    digits, or a part beyond Redis's 64-bit range, raises `InvalidInput` (a ValueError) whose
    detail says what an event id looks like and where to get one.
    """
    ms, dash, seq = event_id.partition("-")
    if _id_part(ms) and (_id_part(seq) or not dash):
        return int(ms), int(seq or 0)
    raise InvalidInput(
        f"not an event id: {event_id[:40]!r}; expected <ms>-<seq>, two whole numbers up to"
        " 2^64-1, as in the event_id of a message",
        field="after",
    )


def _id_part(text: str) -> bool:
    # isdigit() alone admits other scripts' digits ("١٢"), which int() reads and Redis does not.
    return (
        0 < len(text) <= 20 and text.isascii() and text.isdigit() and int(text) <= EVENT_ID_PART_MAX
    )

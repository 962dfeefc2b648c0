"""Typed settings, built once from the environment at start-up and passed in.

Every field is set by `HEIMDALL_<FIELD>` (see `shared/env.py`): declaring a field with a
default and a docstring is all a new setting needs. Secrets are declared `repr=False`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from msgspec import Meta

from shared.env import EnvSettings

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


@dataclass(frozen=True, slots=True)
class Settings(EnvSettings):
    """Everything a Heimdall process needs to know about its surroundings."""

    redis_url: str | None = field(default=None, repr=False)
    """Redis/Valkey URL (may carry a password, hence hidden from repr). None means: start (or
    join) the embedded Valkey under `data_dir`."""

    database_url: str | None = field(default=None, repr=False)
    """PostgreSQL DSN (may carry a password, hence hidden from repr). None means embedded."""

    data_dir: Path = Path(".heimdall")
    """Root for datasets, checkpoints, ONNX files and the embedded servers' data."""

    api_token: str | None = field(default=None, repr=False)
    """When set, every REST and WebSocket call must present it as a bearer token."""

    host: str = "127.0.0.1"
    """Interface the API binds to."""

    port: Annotated[int, Meta(ge=0, le=65535)] = 8001
    """Port the API binds to."""

    job_stream_maxlen: int = 10_000
    """Events kept per job in Redis for resume; older ones are served from the database."""

    heartbeat_s: float = 5.0
    """Longest silence on a WebSocket before a `training_status` heartbeat is sent."""

    progress_interval_s: float = 0.25
    """Batch progress is published at most this often (a few per second)."""

    cancel_grace_s: float = 1.0
    """After a cancel, how long a training process may take to stop before it is killed."""

    lease_ttl_s: float = 10.0
    """A training worker refreshes its job's lease every second; a lease silent this long
    means the worker is lost, and a reaper re-queues the job from its latest checkpoint."""

    redis_timeout_s: float = 3.0
    """Every Redis client connects and waits for each reply at most this long (a blocking read
    adds its block time), so a stalled Redis gives a prompt 503 instead of a hung request."""

    max_recoveries: int = 3
    """How often a job is recovered from lost workers before it fails."""

    shutdown_grace_s: float = 8.0
    """On SIGTERM, how long a training process may take to checkpoint before it is killed
    (within `heimdall up`'s 10 s stop timeout; a killed one resumes from its last epoch)."""

    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the API cross-site (none: same-origin only)."""

    max_body_bytes: int = 1024 * 1024
    """Largest request body the API accepts; larger ones get 413."""

    max_predict_bytes: int = 64 * 1024 * 1024
    """Largest body of a prediction request (its uploaded recordings); larger ones get 413."""

    log_json: bool = False
    """Logs as JSON lines (for production) instead of console lines, for every library's
    logger too (arq, uvicorn, asyncio)."""

    log_level: LogLevel = "INFO"
    """Minimum log level (any case in the environment)."""

    max_jobs: Annotated[int, Meta(ge=1, le=256)] = 1
    """How many jobs one worker trains at once (what `train_threads` divides the cores by)."""

    train_threads: Annotated[int, Meta(ge=0, le=1024)] = 0
    """Torch threads per training process, shared by its DataLoader workers; 0: the cores this
    worker may use (its CPU affinity) divided among `max_jobs` jobs and each job's devices."""

    worker_heartbeat_s: Annotated[float, Meta(gt=0.0, le=3600.0)] = 2.0
    """How often a worker refreshes its heartbeat record (`GET /workers`)."""

    worker_ttl_s: Annotated[float, Meta(gt=0.0, le=86400.0)] = 10.0
    """A worker's record expires this long after its last refresh: a worker silent this long
    (killed, partitioned) is no longer listed nor counted when jobs are admitted."""

    storage_url: str | None = None
    """Where recordings, checkpoints and ONNX models are kept: `file:///abs/path` or
    `s3://bucket/prefix` (any S3-compatible store). None: `file://` on the data dir, the
    layout of one machine. With object storage, workers need no shared filesystem."""

    aws_access_key_id: str | None = field(
        default=None, repr=False, metadata={"env": "AWS_ACCESS_KEY_ID"}
    )
    """Object storage credentials (the standard AWS variable)."""

    aws_secret_access_key: str | None = field(
        default=None, repr=False, metadata={"env": "AWS_SECRET_ACCESS_KEY"}
    )
    """Object storage credentials (the standard AWS variable); a secret."""

    aws_region: str | None = field(default=None, metadata={"env": "AWS_REGION"})
    """Object storage region (the standard AWS variable)."""

    aws_endpoint_url: str | None = field(
        default=None, repr=False, metadata={"env": "AWS_ENDPOINT_URL"}
    )
    """Endpoint of an S3-compatible store other than AWS (MinIO, Ceph, R2): `http://minio:9000`."""

    cache_max_bytes: Annotated[int, Meta(ge=0)] = 20 * 1024**3
    """With object storage, a worker keeps the recordings of the datasets it trained on under
    `<data dir>/cache`, up to this many bytes; the least recently used datasets go first."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.storage_url is not None:
            from shared.storage import check_storage_url

            check_storage_url(self.storage_url)

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given fields replaced; `None` values are ignored (flag not given)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in given:
            given["data_dir"] = Path(given["data_dir"])
        return replace(self, **given)

    @property
    def artifacts_dir(self) -> Path:
        """Where each job keeps its checkpoints and ONNX model, one folder per job id."""
        return self.data_dir / "jobs"

    @property
    def datasets_dir(self) -> Path:
        """Where recordings' signal files live, one folder per dataset."""
        return self.data_dir / "datasets"

    @property
    def cache_dir(self) -> Path:
        """This machine's copies of recordings kept in object storage."""
        return self.data_dir / "cache"

"""Typed settings, built once from the environment at start-up and passed in."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a Heimdall process needs to know about its surroundings."""

    redis_url: str | None = None
    """Redis/Valkey URL. None means: start (or join) the embedded Valkey under `data_dir`."""

    database_url: str | None = field(default=None, repr=False)
    """PostgreSQL DSN (may carry a password, hence hidden from repr). None means embedded."""

    data_dir: Path = Path(".heimdall")
    """Root for datasets, checkpoints, ONNX files and the embedded servers' data."""

    api_token: str | None = field(default=None, repr=False)
    """When set, every REST and WebSocket call must present it as a bearer token."""

    host: str = "127.0.0.1"
    """Interface the API binds to."""

    port: int = 8001
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

    log_json: bool = False
    """Logs as JSON lines (for production) instead of coloured console lines."""

    log_level: str = "INFO"
    """Minimum log level."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))

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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `HEIMDALL_*` variables; unset or empty ones keep their defaults."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(f"HEIMDALL_{name}")
            return value if value else None

        base = cls()
        return cls(
            redis_url=get("REDIS_URL"),
            database_url=get("DATABASE_URL"),
            data_dir=Path(get("DATA_DIR") or base.data_dir),
            api_token=get("API_TOKEN"),
            host=get("HOST") or base.host,
            port=int(get("PORT") or base.port),
            job_stream_maxlen=int(get("JOB_STREAM_MAXLEN") or base.job_stream_maxlen),
            heartbeat_s=float(get("HEARTBEAT_S") or base.heartbeat_s),
            progress_interval_s=float(get("PROGRESS_INTERVAL_S") or base.progress_interval_s),
            cancel_grace_s=float(get("CANCEL_GRACE_S") or base.cancel_grace_s),
            lease_ttl_s=float(get("LEASE_TTL_S") or base.lease_ttl_s),
            max_recoveries=int(get("MAX_RECOVERIES") or base.max_recoveries),
            redis_timeout_s=float(get("REDIS_TIMEOUT_S") or base.redis_timeout_s),
            shutdown_grace_s=float(get("SHUTDOWN_GRACE_S") or base.shutdown_grace_s),
            cors_origins=tuple(
                o.strip() for o in (get("CORS_ORIGINS") or "").split(",") if o.strip()
            ),
            max_body_bytes=int(get("MAX_BODY_BYTES") or base.max_body_bytes),
            log_json=(get("LOG_JSON") or "").lower() in {"1", "true", "yes"},
            log_level=(get("LOG_LEVEL") or base.log_level).upper(),
        )

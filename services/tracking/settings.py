"""The tracking switches, read from the environment once at start-up (by the CLI) and passed in."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from shared.env import EnvSettings
from shared.settings import Settings
from shared.storage import TENSORBOARD_PREFIX

DEFAULT_MLFLOW_TIMEOUT_S = 10.0


def tensorboard_installed() -> bool:
    """Whether the `tensorboard` extra is installed (checked without importing it)."""
    return importlib.util.find_spec("tensorboard") is not None


def mlflow_installed() -> bool:
    """Whether the `mlflow` extra (mlflow or mlflow-skinny) is installed."""
    return importlib.util.find_spec("mlflow") is not None


@dataclass(frozen=True, slots=True)
class TrackingSettings(EnvSettings):
    """Which trackers a worker feeds (`HEIMDALL_*` variables, through `shared/env.py`)."""

    tensorboard: bool = True
    """Write TensorBoard event files (when the package is installed); `HEIMDALL_TENSORBOARD=0`
    turns it off."""

    mlflow_uri: str | None = field(
        default=None, repr=False, metadata={"env": "HEIMDALL_MLFLOW_TRACKING_URI"}
    )
    """MLflow tracking URI (`HEIMDALL_MLFLOW_TRACKING_URI`); None: no MLflow. Hidden from repr
    because such URIs may carry credentials."""

    mlflow_timeout_s: float = DEFAULT_MLFLOW_TIMEOUT_S
    """Longest wait for one MLflow call before MLflow counts as unavailable for the job
    (`HEIMDALL_MLFLOW_TIMEOUT_S`). Uploading the model gets ten times as long."""


def tensorboard_root(settings: Settings) -> Path:
    """The folder `heimdall tensorboard` serves: one sub-folder per job."""
    return settings.data_dir / TENSORBOARD_PREFIX


def _name(job_id: str) -> str:
    # Job ids become folder names: one that could climb out of its folder is a bug upstream.
    if not job_id or job_id in {".", ".."} or "/" in job_id or "\\" in job_id:
        raise ValueError(f"not a job id: {job_id!r}")
    return job_id


def tensorboard_dir(settings: Settings, job_id: str) -> Path:
    """One job's TensorBoard event files."""
    return tensorboard_root(settings) / _name(job_id)


def state_path(settings: Settings, job_id: str) -> Path:
    """Where the tracker remembers how far it got, so a retried job resumes without duplicates."""
    return settings.data_dir / "tracking" / f"{_name(job_id)}.json"

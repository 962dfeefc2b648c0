"""`init_from_job`: a new job starts from the weights of an earlier job's best epoch.

The architecture must be the same. When the classes differ (other names, or another order),
the classification head keeps the fresh initialisation of this job's seed and only the backbone
is taken over; JobStarted and a JobWarning say so. The new job fits its own feature
normalisation on its own train split. With `freeze_backbone`, only the head trains
(fine-tuning the head on a backbone trained elsewhere).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from services.worker.checkpoint import BEST, load_checkpoint
from services.worker.errors import InitCheckpointError
from services.worker.model import head_prefix
from shared.config import TrainingConfig


@dataclass(frozen=True)
class Init:
    """Where a run's first weights came from."""

    job_id: str
    path: Path
    head_reinitialised: bool
    source_classes: list[str]


def checkpoint_of(artifacts_dir: Path, job_id: str) -> Path:
    """The best checkpoint of `job_id` among this worker's job artifacts."""
    return artifacts_dir / str(uuid.UUID(job_id)) / BEST


def init_from_job(
    network: nn.Module, config: TrainingConfig, classes: list[str], artifacts_dir: Path
) -> Init | None:
    """Load `config.init_from_job`'s best weights into `network` (built for `classes`)."""
    if config.init_from_job is None:
        return None
    job_id = str(uuid.UUID(config.init_from_job))
    path = checkpoint_of(artifacts_dir, job_id)
    if not path.is_file():
        raise InitCheckpointError(
            f"init_from_job {job_id}: that job has no best checkpoint ({path}). It must have"
            " completed at least one epoch on a worker that shares this one's artifacts"
            " directory (and not have been deleted)."
        )
    state = load_checkpoint(path)
    source = state.get("architecture")
    if source != config.model_architecture:
        raise InitCheckpointError(
            f"init_from_job {job_id} trained {source}, this job asks for"
            f" {config.model_architecture}: the architecture must be the same (submit with"
            f" model_architecture={source!r})."
        )
    source_classes = [str(c) for c in state.get("classes", [])]
    weights = dict(state["model"])
    reinit = source_classes != classes
    if reinit:
        prefix = head_prefix(network)
        weights = {k: v for k, v in weights.items() if not k.startswith(prefix)}
    try:
        missing, unexpected = network.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise InitCheckpointError(
            f"init_from_job {job_id}: its weights do not fit this network: {exc}"
        ) from None
    kept_fresh = [k for k in missing if not (reinit and k.startswith(head_prefix(network)))]
    if kept_fresh or unexpected:
        raise InitCheckpointError(
            f"init_from_job {job_id}: its weights do not fit this network (missing"
            f" {kept_fresh[:3]}, unexpected {unexpected[:3]})."
        )
    return Init(job_id, path, reinit, source_classes)

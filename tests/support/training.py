"""Training in the test's own process: a run's spec with the defaults tests want."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.worker.run import TrainSpec
from shared.config import TrainingConfig
from shared.datasets import Recording


def quick_spec(
    config: TrainingConfig, recordings: list[Recording], out_dir: Path, **extra: Any
) -> TrainSpec:
    """Job `job`: a progress event for every batch, no ONNX export (pass `export_onnx=True`
    to have one), and whatever else `extra` sets."""
    fields: dict[str, Any] = {"progress_interval_s": 0.0, "export_onnx": False, **extra}
    return TrainSpec(job_id="job", config=config, recordings=recordings, out_dir=out_dir, **fields)

"""A job's artifacts: what its checkpoints hold, writing them, exporting the best to ONNX."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from services.worker.checkpoint import (
    BEST,
    LAST,
    ONNX,
    cpu_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from services.worker.data import SignalFormat, WaveformDataset
from services.worker.onnx_export import export_onnx
from services.worker.progress import EventSink
from shared.events import CheckpointSaved

if TYPE_CHECKING:
    from services.worker.trainer import Run


def checkpoint_state(run: Run, epoch: int) -> dict[str, Any]:
    """What best.pt and last.pt hold: enough to resume the job or rebuild its model."""
    assert run.features is not None
    return {
        "format": 1,
        "epoch": epoch,
        "model": cpu_state_dict(run.network),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.schedule.state_dict(),
        "early_stopping": run.early.state_dict(),
        "scaler": run.scaler.state_dict(),
        "features": run.params.to_dict(),
        "feature_mean": run.features.norm.mean.detach().flatten().cpu(),
        "feature_std": run.features.norm.std.detach().flatten().cpu(),
        "classes": list(run.split.classes),
        "architecture": run.spec.config.model_architecture,
        "config": run.spec.config.to_dict(),
        "seed": run.seed,
    }


def save_epoch(run: Run, sink: EventSink, epoch: int, is_best: bool) -> None:
    """last.pt every epoch, best.pt when the epoch is the best so far; CheckpointSaved each."""
    state = checkpoint_state(run, epoch)
    kinds = [("last", LAST)] + ([("best", BEST)] if is_best else [])
    for kind, name in kinds:
        path = save_checkpoint(run.spec.out_dir / name, state)
        sink.emit(CheckpointSaved(job_id=run.spec.job_id, epoch=epoch, path=str(path), kind=kind))


def parity_sample(run: Run, count: int = 8) -> torch.Tensor:
    """Real waveforms (validation first) on which ONNX and PyTorch must agree."""
    recordings = (run.split.val or run.split.train)[:count]
    fmt = SignalFormat(run.params.sample_rate, run.params.num_samples)
    dataset = WaveformDataset(recordings, run.split.classes, fmt)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def export_best(run: Run) -> tuple[str, float]:
    """Export the best epoch's weights to model.onnx; returns its path and the parity diff."""
    assert run.features is not None
    best = load_checkpoint(run.spec.out_dir / BEST)
    network = copy.deepcopy(run.network).cpu()
    network.load_state_dict(best["model"])
    path = run.spec.out_dir / ONNX
    diff = export_onnx(run.features, network, parity_sample(run), path)
    return str(path), diff

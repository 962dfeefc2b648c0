"""A job's artifacts: what its checkpoints hold, writing them, exporting the best to ONNX."""

from __future__ import annotations

import copy
from pathlib import Path
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
from services.worker.resume import RESUME, Partial, loader_states, position_state
from shared.events import CheckpointSaved

if TYPE_CHECKING:
    from services.worker.trainer import Run


def checkpoint_state(
    run: Run, epoch: int, *, batch: int = 0, partial: Partial | None = None
) -> dict[str, Any]:
    """What best.pt, last.pt and resume.pt hold: enough to resume the job exactly or rebuild
    its model. `epoch` is the last completed epoch; `batch` > 0 means the next epoch is under
    way (a pause, with `partial` its sums), with the loaders' generators as that epoch began."""
    assert run.features is not None
    loaders = run.epoch_loaders if partial is not None else loader_states(run)
    return {
        **position_state(epoch + 1, batch, loaders, partial),
        "format": 2,
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


def save_hold(run: Run, sink: EventSink, epoch: int, partial: Partial) -> Path:
    """resume.pt at a batch boundary of `epoch` (1-based) after `partial.batches` batches."""
    state = checkpoint_state(run, epoch - 1, batch=partial.batches, partial=partial)
    path = save_checkpoint(run.spec.out_dir / RESUME, state)
    saved = CheckpointSaved(job_id=run.spec.job_id, epoch=epoch - 1, path=str(path), kind="pause")
    sink.emit(saved)
    return path


def parity_sample(run: Run, count: int = 8) -> torch.Tensor:
    """Real waveforms (validation first) on which ONNX and PyTorch must agree."""
    recordings = (run.split.val or run.split.train)[:count]
    channels = 2 if run.params.channels == "iq" else 1
    fmt = SignalFormat(run.params.sample_rate, run.params.num_samples, channels)
    dataset = WaveformDataset(recordings, run.split.classes, fmt)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def export_best(run: Run) -> tuple[str, float]:
    """Export the best epoch's weights to model.onnx; returns its path and the parity diff."""
    assert run.features is not None
    best = load_checkpoint(run.spec.out_dir / BEST)
    network = copy.deepcopy(run.network).cpu()
    network.load_state_dict(best["model"])
    path = run.spec.out_dir / ONNX
    diff = export_onnx(run.features, network, parity_sample(run), path, run.split.classes)
    return str(path), diff

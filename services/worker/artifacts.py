"""A job's artifacts: writing its checkpoints (what they hold is `state.py`), exporting the best
epoch to ONNX; each pushed to the blob store before it is reported."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from services.worker.artifact_sync import push
from services.worker.checkpoint import BEST, LAST, ONNX, load_checkpoint, save_checkpoint
from services.worker.data import SignalFormat, WaveformDataset
from services.worker.onnx_export import export_onnx
from services.worker.progress import EventSink
from services.worker.resume import RESUME, Partial, Position
from services.worker.run import Run
from services.worker.state import capture
from shared.events import CheckpointSaved


def save_epoch(run: Run, sink: EventSink, epoch: int, is_best: bool) -> None:
    """last.pt every epoch, best.pt when the epoch is the best so far; CheckpointSaved each."""
    state = capture(run, Position(epoch + 1))
    kinds = [("last", LAST)] + ([("best", BEST)] if is_best else [])
    for kind, name in kinds:
        path = save_checkpoint(run.spec.out_dir / name, state)
        push(run.spec.storage, run.spec.job_id, path)
        sink.emit(CheckpointSaved(job_id=run.spec.job_id, epoch=epoch, path=str(path), kind=kind))


def save_hold(run: Run, sink: EventSink, epoch: int, partial: Partial) -> Path:
    """resume.pt at a batch boundary of `epoch` (1-based) after `partial.batches` batches."""
    state = capture(run, Position(epoch, partial.batches, partial))
    path = save_checkpoint(run.spec.out_dir / RESUME, state)
    push(run.spec.storage, run.spec.job_id, path)
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
    best = load_checkpoint(run.spec.out_dir / BEST)
    network = copy.deepcopy(run.network).cpu()
    network.load_state_dict(best["model"])
    path = run.spec.out_dir / ONNX
    diff = export_onnx(run.features, network, parity_sample(run), path, run.split.classes)
    push(run.spec.storage, run.spec.job_id, path)
    return str(path), diff

"""Pausing and resuming training exactly: where a run stands, and putting a new run back there.

A position is `(epoch, batch)`: the epoch to run next (1-based) and how many of its training
batches are done. Epoch-end checkpoints (`last.pt`) stand at `(E + 1, 0)`; a pause or a worker
shutdown writes `resume.pt` at a batch boundary inside an epoch. Both hold what makes the rest
of the run identical to an uninterrupted one: the random states (python, numpy, torch and the
loaders' generators as they were when the position's epoch began) and, mid-epoch, the epoch's
running sums.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from services.worker.checkpoint import LAST, load_checkpoint

if TYPE_CHECKING:
    from services.worker.trainer import Run

RESUME = "resume.pt"

NONE, PAUSE, SUSPEND = 0, 1, 2
"""Values of the hold signal: carry on, pause (the user asked), suspend (the worker stops)."""


class HoldSignal(Protocol):
    """Read every training batch; a `multiprocessing.Value("i")` fits."""

    @property
    def value(self) -> int: ...


class Held(Exception):
    """Training stopped at a batch boundary because of a hold; the checkpoint is written."""

    def __init__(self, kind: int, path: Path, epoch: int, batch: int) -> None:
        super().__init__(f"held at epoch {epoch} batch {batch}")
        self.kind, self.path, self.epoch, self.batch = kind, path, epoch, batch


@dataclass
class Partial:
    """An epoch's running sums after `batches` training batches (float64, exact to restore)."""

    loss_sum: float = 0.0
    correct_sum: float = 0.0
    norm_sum: float = 0.0
    seen: int = 0
    batches: int = 0
    elapsed_s: float = 0.0

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def f(x: float) -> torch.Tensor:
            return torch.tensor(x, device=device, dtype=torch.float64)

        return f(self.loss_sum), f(self.correct_sum), f(self.norm_sum)


class HoldAt(Exception):
    """Raised inside an epoch at a batch boundary; carries the sums so far."""

    def __init__(self, kind: int, epoch: int, partial: Partial) -> None:
        super().__init__(f"hold at epoch {epoch} after {partial.batches} batches")
        self.kind, self.epoch, self.partial = kind, epoch, partial


@dataclass
class ResumePoint:
    """A checkpoint to continue from."""

    path: Path
    state: dict[str, Any]
    epoch: int
    batch: int

    @property
    def seed(self) -> int:
        return int(self.state["seed"])

    @property
    def partial(self) -> Partial | None:
        part = self.state.get("partial")
        return Partial(**part) if part and self.batch > 0 else None


def rng_state() -> dict[str, Any]:
    """Every global random state a training step can touch."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> tuple[Any, ...]:
    # As plain values and a tensor, which a weights-only torch.load accepts.
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    table = torch.from_numpy(np.asarray(keys).astype(np.int64))
    return (str(name), table, int(pos), int(has_gauss), float(gauss))


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(value: Any) -> tuple[Any, ...]:
    # torch.load returns tuples as lists; random.setstate insists on tuples.
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def loader_states(run: Run) -> dict[str, torch.Tensor]:
    """The generators of the training and validation loaders (shuffle order, worker seeds)."""
    out = {}
    for name, loader in (("train", run.train_loader), ("val", run.val_loader)):
        if loader.generator is not None:
            out[name] = loader.generator.get_state()
    return out


def set_loader_states(run: Run, states: dict[str, torch.Tensor]) -> None:
    for name, loader in (("train", run.train_loader), ("val", run.val_loader)):
        if name in states and loader.generator is not None:
            loader.generator.set_state(states[name])


def position_state(
    epoch: int, batch: int, loaders: dict[str, torch.Tensor], partial: Partial | None
) -> dict[str, Any]:
    """The part of a checkpoint that says where the run stands and how to continue exactly."""
    return {
        "position": {"epoch": epoch, "batch": batch},
        "rng": rng_state(),
        "loaders": loaders,
        "partial": vars(partial) if partial is not None else None,
    }


def read_point(path: Path) -> ResumePoint | None:
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    where = state.get("position")
    if not where or "rng" not in state:
        return None
    return ResumePoint(path, state, int(where["epoch"]), int(where["batch"]))


def latest_point(out_dir: Path) -> ResumePoint | None:
    """The furthest of the job's resumable checkpoints, or None for a fresh start."""
    points = [p for p in (read_point(out_dir / RESUME), read_point(out_dir / LAST)) if p]
    return max(points, key=lambda p: (p.epoch, p.batch), default=None)


def restore(run: Run, point: ResumePoint) -> None:
    """Model, optimiser, schedule, early stopping, scaler and features from the checkpoint.
    Random states come last (`restore_random`), right before training continues."""
    from services.worker.features import FeatureExtractor

    state = point.state
    run.network.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["scheduler"])
    run.early.load_state_dict(state["early_stopping"])
    run.scaler.load_state_dict(state["scaler"])
    mean, std = state["feature_mean"], state["feature_std"]
    run.features = FeatureExtractor(run.params, mean, std).to(run.device).eval()


def restore_random(run: Run, point: ResumePoint) -> None:
    set_loader_states(run, point.state["loaders"])
    set_rng_state(point.state["rng"])

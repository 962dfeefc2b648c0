"""Where a run stands, and finding the checkpoint a new attempt continues from.

A position is `(epoch, batch)`: the epoch to run next (1-based) and how many of its training
batches are done. Epoch-end checkpoints (`last.pt`) stand at `(E + 1, 0)`; a pause or a worker
shutdown writes `resume.pt` at a batch boundary inside an epoch. Both hold what makes the rest
of the run identical to an uninterrupted one (see `state.py`): the random states (python,
numpy, torch and the loaders' generators as they were when the position's epoch began) and,
mid-epoch, the epoch's running sums.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.worker.checkpoint import LAST, load_checkpoint

RESUME = "resume.pt"


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


@dataclass(frozen=True)
class Position:
    """Where a checkpoint stands: the epoch to run next, its batches done, their sums."""

    epoch: int
    batch: int = 0
    partial: Partial | None = None

    @property
    def mid_epoch(self) -> bool:
        return self.partial is not None


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

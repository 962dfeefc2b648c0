"""Checkpoints: everything needed to resume a job or rebuild its model, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

BEST = "best.pt"
LAST = "last.pt"
ONNX = "model.onnx"


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` via a temporary file and a rename, so a reader (or a kill in the
    middle) never sees half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors, numbers, strings, dicts only)."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state (unwrapped from DDP by the caller)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

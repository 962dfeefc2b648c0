"""What a checkpoint holds, saved and restored side by side over one key table.

As Lightning Fabric's `save(path, state)` / `load(path, state)`: each key names one part of the
run with how to capture it and how to put it back. `capture` writes every key; `restore` loads
the keys that have a loader, in table order (the random states last, right before training
continues). Keys without a loader are for readers: what rebuilds the model (architecture,
classes, features) and where the checkpoint stands (`resume.read_point`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch

from services.worker.checkpoint import cpu_state_dict
from services.worker.resume import Position, rng_state, set_rng_state
from services.worker.run import Run

FORMAT = 2
"""Bumped when a key changes meaning; an older checkpoint is then not resumed."""


@dataclass(frozen=True)
class Entry:
    save: Callable[[Run, Position], Any]
    load: Callable[[Run, Any], object] | None = None
    """None: written for readers, not restored into a run."""


def _stateful(name: str) -> Entry:
    """A part of the run with `state_dict` / `load_state_dict` (the attribute `name`)."""
    return Entry(
        save=lambda run, _: getattr(run, name).state_dict(),
        load=lambda run, value: getattr(run, name).load_state_dict(value),
    )


def _buffer(name: str) -> Entry:
    """One of the feature normalisation's per-mel-bin statistics, saved flat."""

    def save(run: Run, _: Position) -> torch.Tensor:
        return cast(torch.Tensor, getattr(run.features.norm, name)).detach().flatten().cpu()

    def load(run: Run, value: torch.Tensor) -> None:
        buffer = cast(torch.Tensor, getattr(run.features.norm, name))
        with torch.no_grad():
            buffer.copy_(value.reshape_as(buffer))

    return Entry(save, load)


def _loaders(run: Run, at: Position) -> Any:
    # Mid-epoch, the generators as the epoch began: the resumed epoch reshuffles alike.
    return run.loaders.epoch_start if at.mid_epoch else run.loaders.state_dict()


TABLE: dict[str, Entry] = {
    "format": Entry(lambda run, at: FORMAT),
    "position": Entry(lambda run, at: {"epoch": at.epoch, "batch": at.batch}),
    "epoch": Entry(lambda run, at: at.epoch - 1),  # the last completed epoch
    "partial": Entry(lambda run, at: vars(at.partial) if at.partial is not None else None),
    "model": Entry(
        lambda run, at: cpu_state_dict(run.network),
        lambda run, value: run.network.load_state_dict(value),
    ),
    "optimizer": _stateful("optimizer"),
    "scheduler": _stateful("schedule"),
    "early_stopping": _stateful("early"),
    "scaler": _stateful("scaler"),
    "features": Entry(lambda run, at: run.params.to_dict()),
    "feature_mean": _buffer("mean"),
    "feature_std": _buffer("std"),
    "classes": Entry(lambda run, at: list(run.split.classes)),
    "architecture": Entry(lambda run, at: run.config.model_architecture),
    "config": Entry(lambda run, at: run.config.to_dict()),
    "seed": Entry(lambda run, at: run.seed),
    "loaders": Entry(_loaders, lambda run, value: run.loaders.load_state_dict(value)),
    "rng": Entry(lambda run, at: rng_state(), lambda run, value: set_rng_state(value)),
}


def capture(run: Run, at: Position) -> dict[str, Any]:
    """The checkpoint of `run` standing at `at`: enough to resume the job exactly or rebuild
    its model."""
    return {key: entry.save(run, at) for key, entry in TABLE.items()}


def restore(run: Run, state: dict[str, Any]) -> None:
    """Put `run` back where `state` stands; the random states come last."""
    for entry, value in ((e, state[k]) for k, e in TABLE.items() if e.load is not None):
        assert entry.load is not None
        entry.load(run, value)

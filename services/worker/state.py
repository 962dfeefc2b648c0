"""What a checkpoint holds, saved and restored side by side over one key table.

As Lightning Fabric's `save(path, state)` / `load(path, state)`: each key names one part of the
run with how to capture it and how to put it back. `capture` writes every key; `restore` runs
the loaders in table order (the random states last, right before training continues). Keys
without a loader are for readers: what rebuilds the model (architecture, classes, features) and
where the checkpoint stands (`resume.read_point`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.worker.checkpoint import cpu_state_dict
from services.worker.resume import Position, rng_state, set_rng_state
from services.worker.run import Run, set_feature_stats

FORMAT = 2
"""Bumped when a key changes meaning."""

State = dict[str, Any]


@dataclass(frozen=True)
class Entry:
    save: Callable[[Run, Position], Any]
    load: Callable[[Run, State], object] | None = None
    """Puts the part back from the whole checkpoint; None: written for readers only."""


def _stateful(key: str, name: str) -> Entry:
    """A part of the run with `state_dict` / `load_state_dict` (the run's attribute `name`)."""
    return Entry(
        save=lambda run, _: getattr(run, name).state_dict(),
        load=lambda run, state: getattr(run, name).load_state_dict(state[key]),
    )


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
        lambda run, state: run.network.load_state_dict(state["model"]),
    ),
    "optimizer": _stateful("optimizer", "optimizer"),
    "scheduler": _stateful("scheduler", "schedule"),
    "early_stopping": _stateful("early_stopping", "early"),
    "scaler": _stateful("scaler", "scaler"),
    "features": Entry(lambda run, at: run.params.to_dict()),
    "feature_mean": Entry(
        lambda run, at: run.features.norm.mean.detach().flatten().cpu(),
        lambda run, state: set_feature_stats(run, state["feature_mean"], state["feature_std"]),
    ),
    "feature_std": Entry(lambda run, at: run.features.norm.std.detach().flatten().cpu()),
    # (restored with feature_mean)
    "classes": Entry(lambda run, at: list(run.split.classes)),
    "architecture": Entry(lambda run, at: run.config.model_architecture),
    "config": Entry(lambda run, at: run.config.to_dict()),
    "seed": Entry(lambda run, at: run.seed),
    "loaders": Entry(_loaders, lambda run, state: run.loaders.load_state_dict(state["loaders"])),
    "rng": Entry(lambda run, at: rng_state(), lambda run, state: set_rng_state(state["rng"])),
}


def capture(run: Run, at: Position) -> State:
    """The checkpoint of `run` standing at `at`: enough to resume the job exactly or rebuild
    its model."""
    return {key: entry.save(run, at) for key, entry in TABLE.items()}


def restore(run: Run, state: State) -> None:
    """Put `run` back where `state` stands; the random states come last."""
    for entry in TABLE.values():
        if entry.load is not None:
            entry.load(run, state)

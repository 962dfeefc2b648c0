"""Pause and resume in-process: a run held at a batch boundary and resumed from its checkpoint
gives the same metrics as one that never stopped; a crash-resumed run emits nothing twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from support import TINY, synthetic_recordings
from support.training import quick_spec

from services.worker.loop import train_epoch
from services.worker.preempt import Held, Preempt
from services.worker.progress import ListSink, NeverStop
from services.worker.resume import RESUME, Position, latest_point
from services.worker.run import TrainSpec, fit_features, prepare
from services.worker.state import TABLE, capture, restore
from services.worker.trainer import train
from shared.config import TrainingConfig
from shared.datasets import Recording
from shared.events import BatchProgress, EpochCompleted, JobStarted

BASE: dict[str, Any] = {**TINY, "epochs": 3, "seed": 11}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Recording]:
    return synthetic_recordings(tmp_path_factory.mktemp("recordings"), 56)


def make_spec(recordings: list[Recording], out: Path, **extra: Any) -> TrainSpec:
    return quick_spec(TrainingConfig(**BASE), recordings, out, **extra)


class HoldAfter:
    """A hold signal that turns on after `reads` reads (one read per training batch)."""

    def __init__(self, reads: int) -> None:
        self.reads = reads

    @property
    def value(self) -> int:
        self.reads -= 1
        return Preempt.PAUSE if self.reads < 0 else Preempt.NONE


def metrics(events: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (e.epoch, e.train_loss, e.val_loss, e.train_accuracy, e.val_accuracy, e.learning_rate)
        for e in events
        if isinstance(e, EpochCompleted)
    ]


def points(events: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (p.epoch, p.batch, p.loss, p.accuracy, p.gradient_norm)
        for e in events
        if isinstance(e, BatchProgress)
        for p in e.points
    ]


def flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]


def test_paused_and_resumed_run_equals_an_uninterrupted_one(
    recordings: list[Recording], tmp_path: Path
) -> None:
    plain = ListSink()
    train(make_spec(recordings, tmp_path / "plain"), plain, NeverStop())
    per_epoch = next(e for e in plain.events if isinstance(e, JobStarted)).total_batches
    assert per_epoch >= 3

    out = tmp_path / "held"
    first = ListSink()
    # Two holds: mid-epoch 2, then exactly at the start of epoch 3.
    with pytest.raises(Held) as held:
        train(make_spec(recordings, out), first, NeverStop(), hold=HoldAfter(per_epoch + 2))
    assert (held.value.epoch, held.value.batch) == (2, 2)
    assert (out / RESUME).is_file()
    second = ListSink()
    with pytest.raises(Held) as held:
        train(make_spec(recordings, out), second, NeverStop(), hold=HoldAfter(per_epoch - 2))
    assert (held.value.epoch, held.value.batch) == (3, 0)
    third = ListSink()
    train(make_spec(recordings, out), third, NeverStop())
    resumed = first.events + second.events + third.events

    assert flat(metrics(resumed)) == pytest.approx(flat(metrics(plain.events)), rel=1e-6)
    assert [m[0] for m in metrics(resumed)] == [1, 2, 3]
    assert flat(points(resumed)) == pytest.approx(flat(points(plain.events)), rel=1e-6)
    starts = [e.start_epoch for e in resumed if isinstance(e, JobStarted)]
    assert starts == [1, 2, 3]
    assert not (out / RESUME).exists()


def test_crash_resume_emits_no_point_twice(recordings: list[Recording], tmp_path: Path) -> None:
    out = tmp_path / "crashed"
    first = ListSink()
    with pytest.raises(Held):
        train(make_spec(recordings, out), first, NeverStop(), hold=HoldAfter(5))
    # A crash loses resume.pt's newer position: only last.pt (end of epoch 1) survives, while
    # the lost run had already emitted batches of epoch 2.
    (out / RESUME).unlink()
    point = latest_point(out)
    assert point is not None and (point.epoch, point.batch) == (2, 0)
    emitted = points(first.events)[-1][:2]
    second = ListSink()
    train(make_spec(recordings, out, emitted=emitted, emitted_epochs=1), second, NeverStop())
    seen = [p[:2] for p in points(first.events + second.events)]
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert [m[0] for m in metrics(first.events + second.events)] == [1, 2, 3]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_a_checkpoint_restores_every_part_it_saves(
    recordings: list[Recording], tmp_path: Path
) -> None:
    """Save and restore go over one key table: a fresh run restored from a trained run's
    checkpoint captures the same state again, key by key."""
    spec = make_spec(recordings, tmp_path)
    trained = prepare(spec)
    fit_features(trained, NeverStop())
    train_epoch(trained, 1, None, NeverStop())
    trained.early.update(1, 0.5)
    saved = capture(trained, Position(2))
    fresh = prepare(spec)
    restored = [k for k, e in TABLE.items() if e.load is not None]
    assert {"model", "optimizer", "scheduler", "early_stopping", "feature_mean", "rng"} <= set(
        restored
    )
    before = capture(fresh, Position(2))
    assert [k for k in restored if not same(before[k], saved[k])]  # the fresh run differs
    restore(fresh, saved)
    again = capture(fresh, Position(2))
    assert [k for k in restored if not same(again[k], saved[k])] == []

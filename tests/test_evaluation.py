"""Evaluation in the worker, in-process: the test split, per-class metrics, `monitor`.

Real training (convnext_atto, short synthetic signals, a few epochs); the metrics the trainer
emits are checked against a computation of our own from the same predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from support import TINY, synthetic_recordings
from support.training import quick_spec

from services.worker import loop
from services.worker.checkpoint import load_checkpoint
from services.worker.metrics import confusion_matrix, snr_bands, summarise
from services.worker.progress import ListSink, NeverStop
from services.worker.run import Run, TrainSpec, prepare, set_feature_stats
from services.worker.split import stratified_split
from services.worker.trainer import train
from shared.config import ConfigError, TrainingConfig
from shared.datasets import Recording
from shared.events import EpochCompleted, EvaluationCompleted, JobStarted
from shared.splits import held_out_test

BASE: dict[str, Any] = {**TINY, "seed": 5, "test_split": 0.2}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Recording]:
    """70 synthetic recordings (10 per class) with their SNRs, 0.25 s at 8 kHz."""
    return synthetic_recordings(tmp_path_factory.mktemp("recordings"), 70)


def config(**overrides: Any) -> TrainingConfig:
    cfg = TrainingConfig(**{**BASE, **overrides})
    cfg.check()
    return cfg


def spec(recordings: list[Recording], tmp_path: Path, **overrides: Any) -> TrainSpec:
    return quick_spec(config(**overrides), recordings, tmp_path / "out")


def test_test_split_is_disjoint_stratified_and_stable(recordings: list[Recording]) -> None:
    a = stratified_split(recordings, 0.2, seed=3, test_split=0.2)
    b = stratified_split(recordings, 0.2, seed=3, test_split=0.2)
    ids = [{r.id for r in part} for part in (a.train, a.val, a.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(len(s) for s in ids) == len(recordings) == a.size
    assert [r.id for r in a.test] == [r.id for r in b.test]
    assert [r.id for r in a.val] == [r.id for r in b.val]
    # 10 per class: 2 validate, 2 test, in every class.
    for part in (a.val, a.test):
        counts = {c: sum(r.label == c for r in part) for c in a.classes}
        assert set(counts.values()) == {2}
    # The validation set of a seed does not move when a test set is added.
    no_test = stratified_split(recordings, 0.2, seed=3)
    assert [r.id for r in no_test.val] == [r.id for r in a.val] and not no_test.test
    other = stratified_split(recordings, 0.2, seed=4, test_split=0.2)
    assert {r.id for r in other.test} != ids[2]


def test_held_out_rule_keeps_one_training_recording() -> None:
    assert held_out_test(10, 0.2, 0.2) == 2
    assert held_out_test(2, 0.5, 0.5) == 0  # one validates, the last trains
    assert held_out_test(3, 0.3, 0.3) == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"validation_split": 0.5, "test_split": 0.35}, "test_split"),
        ({"validation_split": 0.0, "monitor": "val_accuracy"}, "monitor"),
    ],
)
def test_config_rules_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(**overrides)
    assert caught.value.field == field
    config(validation_split=0.5, test_split=0.3)  # 0.8 exactly is allowed


def _reference(labels: list[int], predicted: list[int], classes: list[str]) -> dict[str, Any]:
    """Per-class metrics the long way, sample by sample."""
    out: dict[str, Any] = {}
    f1s = []
    for i, name in enumerate(classes):
        tp = sum(1 for t, p in zip(labels, predicted, strict=True) if t == i and p == i)
        fp = sum(1 for t, p in zip(labels, predicted, strict=True) if t != i and p == i)
        fn = sum(1 for t, p in zip(labels, predicted, strict=True) if t == i and p != i)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = (precision, recall, f1, tp + fn)
        if tp + fn + fp:
            f1s.append(f1)
    out["macro_f1"] = sum(f1s) / len(f1s) if f1s else 0.0
    return out


def test_metrics_match_a_computation_by_hand() -> None:
    rng = np.random.default_rng(1)
    classes = ["a", "b", "c", "d"]
    labels = rng.integers(0, 3, 200).tolist()  # class d never occurs
    predicted = [t if rng.random() < 0.6 else int(rng.integers(0, 4)) for t in labels]
    snrs: list[float | None] = [float(s) for s in rng.uniform(-7, 12, 200)]
    snrs[0] = None
    matrix = confusion_matrix(labels, predicted, 4)
    assert matrix.sum() == 200 and matrix[3].sum() == 0
    lows, bands = snr_bands(snrs)
    assert lows == [-10.0, -5.0, 0.0, 5.0, 10.0] and bands[0] == -1
    correct = np.array(labels) == np.array(predicted)
    total = np.bincount(bands[bands >= 0], minlength=len(lows))
    right = np.bincount(bands[(bands >= 0) & correct], minlength=len(lows))
    s = summarise(matrix, classes, lows, total, right)
    want = _reference(labels, predicted, classes)
    for name in classes:
        m = s.per_class[name]
        assert (m.precision, m.recall, m.f1, m.support) == pytest.approx(want[name])
    assert s.macro_f1 == pytest.approx(want["macro_f1"])
    assert s.accuracy == pytest.approx(float(correct.mean()))
    for band in s.accuracy_by_snr:
        members = [
            i
            for i, x in enumerate(snrs)
            if x is not None and band.snr_db_min <= x < band.snr_db_max
        ]
        assert band.support == len(members)
        assert band.accuracy == pytest.approx(np.mean([correct[i] for i in members]))
    assert sum(b.support for b in s.accuracy_by_snr) == 199


def best_run(job: TrainSpec) -> Run:
    """The job's run rebuilt with its best checkpoint's weights and feature statistics."""
    best = load_checkpoint(job.out_dir / "best.pt")
    run = prepare(job)
    run.network.load_state_dict(best["model"])
    set_feature_stats(run, best["feature_mean"], best["feature_std"])
    return run


def _predictions(run: Any, loader: Any) -> tuple[list[int], list[int]]:
    out = loop.predict(run, loader, NeverStop(), "check")
    return out.labels.tolist(), out.logits.argmax(dim=1).tolist()


def test_job_with_test_split_evaluates_val_every_epoch_and_test_once(
    recordings: list[Recording], tmp_path: Path
) -> None:
    sink = ListSink()
    job = spec(recordings, tmp_path, epochs=2, test_split=0.2)
    result = train(job, sink, NeverStop())
    started = next(e for e in sink.events if isinstance(e, JobStarted))
    assert (started.train_samples, started.val_samples, started.test_samples) == (42, 14, 14)
    evals = [e for e in sink.events if isinstance(e, EvaluationCompleted)]
    best_epoch = result.completed.best_epoch
    assert [(e.phase, e.epoch) for e in evals] == [("val", 1), ("val", 2), ("test", best_epoch)]
    test = evals[-1]
    epochs = [e for e in sink.events if isinstance(e, EpochCompleted)]
    for ev, epoch in zip(evals[:2], epochs, strict=True):
        assert sum(map(sum, ev.confusion_matrix)) == ev.samples == 14
        assert ev.accuracy == pytest.approx(epoch.val_accuracy)
        assert ev.loss == pytest.approx(epoch.val_loss)
        assert ev.macro_f1 == pytest.approx(epoch.val_macro_f1)
    assert sum(map(sum, test.confusion_matrix)) == test.samples == 14
    # The same predictions, from the best checkpoint, computed here.
    run = best_run(job)
    assert run.loaders.test is not None
    labels, predicted = _predictions(run, run.loaders.test)
    k = len(run.split.classes)
    assert test.confusion_matrix == confusion_matrix(labels, predicted, k).tolist()
    want = _reference(labels, predicted, run.split.classes)
    for name, m in test.per_class.items():
        assert (m.precision, m.recall, m.f1, m.support) == pytest.approx(want[name])
    assert test.macro_f1 == pytest.approx(want["macro_f1"])
    assert sum(b.support for b in test.accuracy_by_snr) == 14


def test_no_test_split_means_no_test_evaluation(
    recordings: list[Recording], tmp_path: Path
) -> None:
    sink = ListSink()
    train(spec(recordings, tmp_path, epochs=1, test_split=0.0), sink, NeverStop())
    phases = [e.phase for e in sink.events if isinstance(e, EvaluationCompleted)]
    assert phases == ["val"]


def test_monitor_val_accuracy_picks_and_exports_the_most_accurate_epoch(
    recordings: list[Recording], tmp_path: Path
) -> None:
    sink = ListSink()
    job = quick_spec(
        config(epochs=4, monitor="val_accuracy", early_stop_patience=10),
        recordings,
        tmp_path / "out",
        export_onnx=True,
    )
    result = train(job, sink, NeverStop())
    epochs = [e for e in sink.events if isinstance(e, EpochCompleted)]
    accuracies = [e.val_accuracy for e in epochs]
    losses = [e.val_loss for e in epochs]
    want = 1 + max(range(len(accuracies)), key=lambda i: (accuracies[i], -i))
    done = result.completed
    assert done.best_epoch == want and done.monitor == "val_accuracy"
    assert done.best_value == pytest.approx(accuracies[want - 1])
    assert done.best_val_loss == pytest.approx(losses[want - 1])
    assert all(e.monitor == "val_accuracy" for e in epochs)
    assert load_checkpoint(job.out_dir / "best.pt")["epoch"] == want
    # The exported model is that epoch's: onnxruntime agrees with best.pt's weights.
    run = best_run(job)
    wave = torch.stack([run.loaders.val.dataset[i][0] for i in range(4)])  # type: ignore[index]
    run.network.eval()
    with torch.inference_mode():
        want_logits = run.network(run.features(wave)).numpy()
    session = ort.InferenceSession(str(job.out_dir / "model.onnx"))
    got = session.run(["logits"], {"waveform": wave.numpy()})[0]
    assert np.max(np.abs(got - want_logits)) < 2e-3

"""The training functions directly, in-process: every TrainingConfig field has an effect.

Fast tests on the plain functions; the end-to-end path is in test_worker_e2e.py.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import torch
from support import TINY, synthetic_recordings
from support.training import quick_spec

from services.worker import loop
from services.worker.checkpoint import load_checkpoint
from services.worker.data import check_recordings, job_recordings
from services.worker.errors import (
    AcceleratorUnavailable,
    DatasetError,
    PretrainedWeightsUnavailable,
    TrainingCancelled,
)
from services.worker.features import ExportLogMel, FeatureParams, LogMel
from services.worker.hardware import check_accelerator
from services.worker.model import build_model
from services.worker.optim import EarlyStopping, LrSchedule, build_optimizer
from services.worker.process import Gate, claim
from services.worker.progress import ListSink, NeverStop, ProgressReporter
from services.worker.run import TrainSpec, fit_features, prepare
from services.worker.split import stratified_split
from services.worker.trainer import train
from shared.config import TrainingConfig
from shared.datasets import Recording, write_synthetic
from shared.events import BatchProgress, EpochCompleted, Event, JobStarted
from shared.settings import Settings
from shared.storage import open_store

BASE: dict[str, Any] = {**TINY, "epochs": 2, "seed": 11, "test_split": 0.0}
"""No test set: the counts below are of train and validation (tests/test_evaluation.py has
the test set)."""


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def config(**overrides: Any) -> TrainingConfig:
    cfg = TrainingConfig(**{**BASE, **overrides})
    cfg.check()
    return cfg


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Recording]:
    """70 synthetic recordings (10 per class), 0.25 s at 8 kHz, without a database."""
    return synthetic_recordings(tmp_path_factory.mktemp("recordings"), 70)


def spec(recordings: list[Recording], tmp_path: Path, **overrides: Any) -> TrainSpec:
    return quick_spec(config(**overrides), recordings, tmp_path / "out")


def of(kind: type[Event], events: list[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


# --- data -----------------------------------------------------------------------------------


def test_batch_size_sets_batches_per_epoch(recordings: list[Recording], tmp_path: Path) -> None:
    for batch_size in (8, 32):
        run = prepare(spec(recordings, tmp_path, batch_size=batch_size, validation_split=0.2))
        assert len(run.split.train) == 56
        assert len(run.train_loader) == math.ceil(56 / batch_size)


def test_validation_split_is_stratified_and_seeded(recordings: list[Recording]) -> None:
    for fraction, expected_val in ((0.0, 0), (0.2, 14), (0.5, 35)):
        split = stratified_split(recordings, fraction, seed=1)
        assert len(split.val) == expected_val and split.size == 70
        per_class = {c: sum(r.label == c for r in split.val) for c in split.classes}
        assert set(per_class.values()) == {expected_val // 7}
    a, b, c = (stratified_split(recordings, 0.3, seed=s) for s in (1, 1, 2))
    assert [r.id for r in a.val] == [r.id for r in b.val] != [r.id for r in c.val]


async def test_dataset_and_filters_select_the_recordings(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await write_synthetic(db, open_store(settings), "one", 60, seed=2, duration_s=0.1)
    await write_synthetic(db, open_store(settings), "two", 20, seed=3, duration_s=0.1)
    everything = await job_recordings(db, config(dataset="one"))
    assert len(everything) == 60
    assert len(await job_recordings(db, config(dataset="two"))) == 20
    clean = await job_recordings(db, config(dataset="one", min_snr_db=10.0))
    approved = await job_recordings(db, config(dataset="one", only_approved=True))
    assert 0 < len(clean) < 60 and all((r.snr_db or 0) >= 10.0 for r in clean)
    assert 0 < len(approved) < 60 and all(r.approved for r in approved)
    with pytest.raises(DatasetError, match="selects none"):
        check_recordings(await job_recordings(db, config(dataset="none")), config())


def test_num_workers_sets_loader_processes(recordings: list[Recording], tmp_path: Path) -> None:
    run = prepare(spec(recordings, tmp_path, num_workers=2, batch_size=32))
    assert run.train_loader.num_workers == 2 and run.val_loader.num_workers == 2
    wave, label = next(iter(run.train_loader))
    assert wave.shape == (32, 2000) and label.shape == (32,)


# --- features -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_mels", "n_fft", "hop"), [(32, 256, 64), (16, 128, 100), (40, 255, 32)])
def test_feature_params_shape_the_input_and_export_matches(
    n_mels: int, n_fft: int, hop: int
) -> None:
    params = FeatureParams(
        sample_rate=8000, num_samples=2000, n_fft=n_fft, hop_length=hop, n_mels=n_mels
    )
    logmel = LogMel(params)
    wave = torch.randn(3, 2000) * 0.3
    feats = logmel(wave)
    assert feats.shape == (3, 1, n_mels, 1 + 2000 // hop) == (3, 1, n_mels, params.frames)
    assert logmel.mel.n_fft == n_fft
    assert torch.allclose(ExportLogMel(logmel)(wave), feats, atol=1e-3)


def test_normalisation_uses_train_split_stats(recordings: list[Recording], tmp_path: Path) -> None:
    run = prepare(spec(recordings, tmp_path))
    features = fit_features(run, NeverStop())
    x = torch.cat([features(w) for w, _ in run.train_loader])
    assert abs(float(x.mean())) < 1e-3
    assert abs(float(x.transpose(0, 2).reshape(32, -1).std(dim=1).mean()) - 1.0) < 1e-2


# --- model and optimiser --------------------------------------------------------------------


def test_architecture_dropout_and_weight_decay(recordings: list[Recording]) -> None:
    atto = build_model(config(dropout_rate=0.35), num_classes=5)
    femto = build_model(config(model_architecture="convnext_femto"), num_classes=5)
    assert sum(p.numel() for p in femto.parameters()) > sum(p.numel() for p in atto.parameters())
    assert atto.head.drop.p == 0.35  # type: ignore[union-attr]
    assert atto.stem[0].in_channels == 1 and atto.head.fc.out_features == 5  # type: ignore[index,union-attr]
    optimizer = build_optimizer(atto, config(weight_decay=0.05, learning_rate=0.004))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05
    assert optimizer.param_groups[0]["lr"] == 0.004


def test_pretrained_fails_at_once_when_weights_cannot_be_had() -> None:
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        build_model(config(pretrained=True), num_classes=3)
    message = str(info.value)
    for words in ("convnext_atto", "not in the local Hugging Face cache", "pretrained=false"):
        assert words in message


def test_gpu_without_cuda_fails_clearly() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(AcceleratorUnavailable, match="CUDA is not available"):
        check_accelerator(config(accelerator="gpu"))
    check_accelerator(config(accelerator="cpu"))


@pytest.mark.parametrize(
    ("kind", "warmup", "expected"),
    [
        ("cosine", 0, [1.0, 0.975528, 0.904508, 0.793893, 0.654508, 0.5, 0.345492]),
        ("cosine", 2, [0.2, 0.4, 0.6, 0.8, 1.0, 0.933013, 0.75]),
        # Five epochs of warm-up in a five-epoch run: cut to half of it (5 of 10 steps).
        ("cosine", 5, [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0, 0.904508]),
        ("step", 0, [1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01]),
        ("step", 2, [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.1]),
        ("plateau", 1, [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_lr_schedule_and_warmup_per_step(kind: str, warmup: int, expected: list[float]) -> None:
    """Two steps per epoch, five epochs: the rate moves every step, warm-up included."""
    cfg = config(lr_scheduler=kind, warmup_epochs=warmup, epochs=5, learning_rate=1.0)
    schedule = LrSchedule.from_config(cfg, steps_per_epoch=2)
    assert schedule.total_steps == 10 and schedule.warmup_steps == min(2 * warmup, 5)
    assert [round(schedule.lr_at(s), 6) for s in range(7)] == [round(x, 6) for x in expected]


def test_plateau_lowers_the_rate_when_the_loss_stalls() -> None:
    schedule = LrSchedule.from_config(
        config(lr_scheduler="plateau", early_stop_patience=4, learning_rate=1.0, warmup_epochs=0),
        steps_per_epoch=1,
    )
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.95, 0.95]):
        schedule.observe(epoch, loss)
    assert schedule.lr_at(5) == pytest.approx(0.1)


def test_early_stopping_counts_patience() -> None:
    early = EarlyStopping(patience=2)
    assert early.update(1, 1.0) and not early.should_stop
    assert not early.update(2, 1.1) and not early.should_stop
    assert not early.update(3, 1.0) and early.should_stop
    assert early.best_epoch == 1


# --- the training loop ----------------------------------------------------------------------


def test_seeded_run_is_reproducible_and_reports_its_schedule(
    recordings: list[Recording], tmp_path: Path
) -> None:
    overrides = {"lr_scheduler": "step", "warmup_epochs": 1, "epochs": 2}
    runs = []
    # 56 training recordings in batches of 16: 4 steps per epoch, warm-up over the first 4;
    # an epoch reports the rate of its last step.
    expected_lr = [0.002 * 4 / 5, 0.002 * 0.1**3]
    for i, seed in enumerate((11, 11, 12)):
        sink = ListSink()
        path = tmp_path / str(i)
        result = train(spec(recordings, path, seed=seed, **overrides), sink, NeverStop())
        runs.append([(e.train_loss, e.val_loss, e.gradient_norm) for e in result.history])
        epochs = of(EpochCompleted, sink.events)
        assert [e.epoch for e in epochs] == [1, 2] and result.completed.epochs_run == 2
        assert [e.learning_rate for e in epochs] == pytest.approx(expected_lr)
        rates = [p.learning_rate for e in of(BatchProgress, sink.events) for p in e.points]
        assert rates[:4] == pytest.approx([0.002 * k / 5 for k in (1, 2, 3, 4)])
        assert all(e.gradient_norm and e.gradient_norm > 0 for e in epochs)
        assert (path / "out" / "best.pt").exists() and (path / "out" / "last.pt").exists()
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_early_stop_patience_ends_the_job(
    recordings: list[Recording], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    losses = iter([1.0, 0.8, 0.9, 0.85, 0.7, 0.6])

    def scripted(run: Any, loader: Any, recordings: Any, stop: Any, phase: str) -> Any:
        k = len(run.split.classes)
        empty = np.zeros(0, dtype=np.int64)
        return loop.Assessment(next(losses), k, np.eye(k, dtype=np.int64), [], empty, empty)

    monkeypatch.setattr(loop, "assess", scripted)
    sink = ListSink()
    result = train(spec(recordings, tmp_path, epochs=6, early_stop_patience=2), sink, NeverStop())
    done = result.completed
    assert done.stopped_early and done.epochs_run == 4
    assert done.best_epoch == 2 and done.best_val_loss == 0.8
    assert [e.is_best for e in of(EpochCompleted, sink.events)] == [True, True, False, False]


def test_progress_carries_every_batch_when_throttled() -> None:
    sink = ListSink()
    reporter = ProgressReporter(sink, "job", total_batches=50, interval_s=3600.0)
    one = torch.tensor(1.0)
    for batch in range(1, 51):
        reporter.record(1, batch, one, one, torch.tensor(math.inf), 0.1)
    assert sink.events == []
    reporter.flush()
    (event,) = sink.events
    assert isinstance(event, BatchProgress) and event.batch == 50
    assert [p.batch for p in event.points] == list(range(1, 51))
    assert event.points[0].gradient_norm is None


class StopAt:
    """Sets itself once the trainer has emitted the event `when` is true of."""

    def __init__(self, sink: ListSink, when: Any) -> None:
        self.sink, self.when = sink, when

    def is_set(self) -> bool:
        return any(self.when(e) for e in self.sink.events)


@pytest.mark.parametrize(
    ("phase", "when"),
    [
        ("training", lambda e: isinstance(e, BatchProgress)),
        # The epoch's last batch has been flushed: the trainer is validating.
        ("validation", lambda e: isinstance(e, BatchProgress) and e.batch == e.total_batches),
    ],
)
def test_stop_is_seen_in_training_and_in_validation(
    recordings: list[Recording], tmp_path: Path, phase: str, when: Any
) -> None:
    sink = ListSink()
    with pytest.raises(TrainingCancelled) as info:
        train(spec(recordings, tmp_path, epochs=50), sink, StopAt(sink, when))
    assert info.value.phase == phase
    assert not of(EpochCompleted, sink.events)
    assert len(of(JobStarted, sink.events)) == 1


def test_terminal_gate_admits_one_claimant() -> None:
    import multiprocessing as mp

    gate = mp.get_context("spawn").Value("i", Gate.OPEN)
    assert claim(gate, Gate.PARENT)
    assert not claim(gate, Gate.TRAINER) and not claim(gate, Gate.PARENT)


def test_onnx_export_matches_pytorch(recordings: list[Recording], tmp_path: Path) -> None:
    sink = ListSink()
    result = train(
        replace(spec(recordings, tmp_path, epochs=1), export_onnx=True), sink, NeverStop()
    )
    done = result.completed
    assert done.onnx_model_path and Path(done.onnx_model_path).exists()
    assert done.onnx_max_abs_diff is not None and done.onnx_max_abs_diff < 2e-3
    state = load_checkpoint(Path(done.checkpoint_path or ""))
    for key in ("model", "optimizer", "scheduler", "early_stopping", "epoch", "features"):
        assert key in state
    assert state["classes"] == sorted({r.label for r in recordings})
    assert state["features"]["n_mels"] == 32 and state["feature_mean"].shape == (32,)


def test_short_spectrograms_are_padded_to_what_convnext_needs(
    recordings: list[Recording], tmp_path: Path
) -> None:
    """0.25 s at the seed's defaults (n_fft 2048, hop 512) is 4 frames; ConvNeXt needs 32."""
    sink = ListSink()
    short = spec(recordings, tmp_path, epochs=1, n_fft=2048, hop_length=512, n_mels=16)
    result = train(replace(short, export_onnx=True), sink, NeverStop())
    assert len(of(EpochCompleted, sink.events)) == 1
    diff = result.completed.onnx_max_abs_diff
    assert diff is not None and diff < 2e-3


def test_pretrained_loads_from_a_prepopulated_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remedy the error message gives works: weights in the Hugging Face cache are used
    (offline, at once) and adapted to one input channel and the job's classes."""
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from services.worker.model import hf_hub_id

    hub_id = hf_hub_id("convnext_atto")
    assert hub_id
    source = timm.create_model("convnext_atto", pretrained=False)
    commit = "0" * 40
    repo = tmp_path / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, snapshot / "model.safetensors"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    model = build_model(config(pretrained=True), num_classes=4)
    stage = "stages.3.blocks.1.mlp.fc1.weight"
    assert torch.equal(model.state_dict()[stage], source.state_dict()[stage])
    assert model.stem[0].in_channels == 1  # type: ignore[index]

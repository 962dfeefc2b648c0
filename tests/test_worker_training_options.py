"""Issue 16's training options, in-process on tiny runs: each field changes what it says it
changes (and the test fails when the trainer ignores it)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import torch
import torch.distributed as dist
from support import TINY, synthetic_recordings
from support.training import quick_spec

from services.worker import loop
from services.worker.augment import Augment
from services.worker.ddp import DistInfo, free_init_method
from services.worker.errors import AcceleratorUnavailable, InitCheckpointError
from services.worker.hardware import cpu_has_bf16, resolve_precision, train_threads
from services.worker.model import head_prefix
from services.worker.preempt import Held, Preempt
from services.worker.progress import ListSink, NeverStop, ProgressReporter
from services.worker.run import Run, TrainSpec, fit_features, prepare
from services.worker.trainer import train
from shared.config import ConfigError, TrainingConfig
from shared.datasets import Recording
from shared.events import BatchProgress, Event, JobStarted, JobWarning

BASE: dict[str, Any] = {**TINY, "epochs": 1, "seed": 3, "test_split": 0.0}
"""No test set: the counts below are of train and validation (test_evaluation.py has it)."""


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Recording]:
    """42 recordings, 6 per class: 35 train (an odd count) and 7 validation."""
    return synthetic_recordings(tmp_path_factory.mktemp("recordings"), 42)


@pytest.fixture(scope="module")
def iq_recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Recording]:
    """The same split sizes, recorded as IQ (where a frequency shift applies)."""
    return synthetic_recordings(tmp_path_factory.mktemp("iq"), 42, iq=True)


def make_spec(recordings: list[Recording], out_dir: Path, **overrides: Any) -> TrainSpec:
    config = TrainingConfig(**{**BASE, **overrides})
    config.check()
    return quick_spec(config, recordings, out_dir)


def of(kind: type[Event], events: list[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


@contextlib.contextmanager
def network_inputs(run: Run) -> Iterator[list[torch.Tensor]]:
    """Every input the network sees while the block runs (training and validation)."""
    seen: list[torch.Tensor] = []
    handle = run.network.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        yield seen
    finally:
        handle.remove()


@contextlib.contextmanager
def network_outputs(run: Run) -> Iterator[list[torch.Tensor]]:
    """Every output (logits) of the network while the block runs."""
    seen: list[torch.Tensor] = []
    handle = run.network.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    try:
        yield seen
    finally:
        handle.remove()


# --- augmentation ---------------------------------------------------------------------------


def inputs_of(run: Run) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The network's inputs over one training epoch, then over the validation split."""
    fit_features(run, NeverStop())
    with network_inputs(run) as train_inputs:
        loop.train_epoch(run, 1, None, NeverStop())
    with network_inputs(run) as val_inputs:
        loop.predict(run, run.val_loader, NeverStop(), "validation")
    return train_inputs, val_inputs


@pytest.mark.parametrize(
    "augmentation",
    [
        {"aug_time_crop": 0.5},
        {"aug_noise_snr_db_min": 0.0, "aug_noise_snr_db_max": 10.0},
        {"aug_time_masks": 2, "aug_time_mask_width": 0.3},
        {"aug_freq_masks": 2, "aug_freq_mask_width": 0.3},
        {"aug_freq_shift_hz": 1000.0},
    ],
)
def test_augmentation_changes_training_batches_only(
    recordings: list[Recording],
    iq_recordings: list[Recording],
    tmp_path: Path,
    augmentation: dict[str, Any],
) -> None:
    data = iq_recordings if "aug_freq_shift_hz" in augmentation else recordings
    plain_train, plain_val = inputs_of(prepare(make_spec(data, tmp_path / "a")))
    aug_train, aug_val = inputs_of(prepare(make_spec(data, tmp_path / "b", **augmentation)))
    assert len(aug_train) == len(plain_train) == 3
    assert all(not torch.equal(a, p) for a, p in zip(aug_train, plain_train, strict=True))
    assert len(aug_val) == len(plain_val) == 1
    assert all(torch.equal(a, p) for a, p in zip(aug_val, plain_val, strict=True))
    if "aug_time_masks" in augmentation:  # masked frames hold the mean: 0 after normalising
        assert any(bool((x[..., :32, :] == 0).all(dim=2).any()) for x in aug_train)


def test_frequency_shift_moves_iq_and_leaves_real_signals_alone(
    recordings: list[Recording], tmp_path: Path
) -> None:
    augment = Augment(freq_shift_hz=1000.0, sample_rate=8000)
    iq = torch.randn(4, 2, 800)
    shifted = augment.wave(iq)
    assert not torch.allclose(shifted, iq)
    # A frequency shift is a rotation of I + jQ: the power of every sample stays.
    assert torch.allclose(shifted.pow(2).sum(dim=1), iq.pow(2).sum(dim=1), atol=1e-4)
    spectrum = torch.fft.fft(torch.complex(shifted[:, 0], shifted[:, 1])).abs()
    assert not torch.allclose(spectrum, torch.fft.fft(torch.complex(iq[:, 0], iq[:, 1])).abs())
    real = torch.randn(4, 800)
    assert torch.equal(augment.wave(real), real)
    sink = ListSink()
    train(make_spec(recordings, tmp_path, aug_freq_shift_hz=500.0), sink, NeverStop())
    (warning,) = of(JobWarning, sink.events)
    assert "aug_freq_shift_hz" in warning.message and "IQ" in warning.message


# --- init_from_job and freeze_backbone ------------------------------------------------------


@pytest.fixture(scope="module")
def source_job(recordings: list[Recording], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An earlier job's folder under a jobs directory, with its best checkpoint."""
    out = tmp_path_factory.mktemp("jobs") / str(uuid.uuid4())
    torch.set_num_threads(1)
    train(make_spec(recordings, out), ListSink(), NeverStop())
    assert (out / "best.pt").is_file()
    return out


def test_freeze_backbone_needs_trained_weights() -> None:
    with pytest.raises(ConfigError) as info:
        TrainingConfig(**{**BASE, "freeze_backbone": True}).check()
    assert info.value.field == "freeze_backbone"
    TrainingConfig(**{**BASE, "freeze_backbone": True, "pretrained": True}).check()
    TrainingConfig(**{**BASE, "freeze_backbone": True, "init_from_job": str(uuid.uuid4())}).check()


def test_init_from_job_starts_from_its_best_weights(
    recordings: list[Recording], source_job: Path
) -> None:
    from services.worker.checkpoint import load_checkpoint

    best = load_checkpoint(source_job / "best.pt")["model"]
    spec = make_spec(recordings, source_job.parent / "new", init_from_job=source_job.name)
    run = prepare(spec)
    assert run.init is not None and not run.init.head_reinitialised
    assert all(torch.equal(v, best[k]) for k, v in run.network.state_dict().items())
    fresh = prepare(make_spec(recordings, source_job.parent / "other"))
    assert not torch.equal(fresh.network.state_dict()["stem.0.weight"], best["stem.0.weight"])
    sink = ListSink()
    train(spec, sink, NeverStop())
    (started,) = of(JobStarted, sink.events)
    assert started.init_from_job == source_job.name and not started.head_reinitialised


def test_init_from_job_reinitialises_the_head_when_classes_differ(
    recordings: list[Recording], source_job: Path
) -> None:
    from services.worker.checkpoint import load_checkpoint

    best = load_checkpoint(source_job / "best.pt")["model"]
    fewer = [r for r in recordings if r.label not in ("am", "fm")]
    spec = make_spec(fewer, source_job.parent / "fewer", init_from_job=source_job.name)
    run = prepare(spec)
    prefix = head_prefix(run.network)
    state = run.network.state_dict()
    assert run.init is not None and run.init.head_reinitialised
    assert all(torch.equal(v, best[k]) for k, v in state.items() if not k.startswith(prefix))
    assert state[f"{prefix}fc.weight"].shape[0] == 5
    sink = ListSink()
    train(spec, sink, NeverStop())
    (started,) = of(JobStarted, sink.events)
    assert started.head_reinitialised
    assert any("head" in w.message for w in of(JobWarning, sink.events))


def test_init_from_job_fails_clearly(recordings: list[Recording], source_job: Path) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(InitCheckpointError, match="no best checkpoint"):
        prepare(make_spec(recordings, source_job.parent / "x", init_from_job=missing))
    other = make_spec(
        recordings,
        source_job.parent / "y",
        init_from_job=source_job.name,
        model_architecture="convnext_femto",
    )
    with pytest.raises(InitCheckpointError, match="architecture must be the same"):
        prepare(other)


def test_freeze_backbone_trains_only_the_head(
    recordings: list[Recording], source_job: Path
) -> None:
    """Head-only fine-tuning: the backbone of an earlier job, frozen."""
    out = source_job.parent / "frozen"
    run = prepare(make_spec(recordings, out, init_from_job=source_job.name, freeze_backbone=True))
    prefix = head_prefix(run.network)
    before = {k: v.clone() for k, v in run.network.state_dict().items()}
    names = [n for n, _ in run.network.named_parameters()]
    trainable = {n for n, p in run.network.named_parameters() if p.requires_grad}
    assert trainable == {n for n in names if n.startswith(prefix)} and len(trainable) < len(names)
    fit_features(run, NeverStop())
    loop.train_epoch(run, 1, None, NeverStop())
    after = run.network.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(prefix) for k in changed)


# --- loss and optimisation ------------------------------------------------------------------


def test_balanced_class_weighting_raises_minority_recall(tmp_path: Path) -> None:
    """Forty recordings of one class and six of another, where the six are copies of six of
    the forty (classes that overlap, as real ones do near their boundary): which class the
    model gives the overlap is decided by how much each class weighs in the loss."""
    many = synthetic_recordings(tmp_path / "a", 40, seed=1, labels={"noise": "many"})
    few = synthetic_recordings(tmp_path / "b", 6, seed=1, labels={"noise": "few"})
    data = many + few
    recall = {}
    for weighting in ("none", "balanced"):
        spec = make_spec(
            data, tmp_path / weighting, epochs=2, validation_split=0.0, class_weighting=weighting
        )
        run = prepare(spec)
        fit_features(run, NeverStop())
        for epoch in (1, 2):
            loop.train_epoch(run, epoch, None, NeverStop())
        out = loop.predict(run, run.train_loader, NeverStop(), "evaluation")
        few = out.labels == run.split.classes.index("few")
        recall[weighting] = float((out.logits[few].argmax(dim=1) == out.labels[few]).float().mean())
    assert recall["balanced"] > recall["none"], recall


def test_label_smoothing_is_the_loss_trained_on(
    recordings: list[Recording], tmp_path: Path
) -> None:
    for smoothing in (0.0, 0.3):
        run = prepare(make_spec(recordings, tmp_path / str(smoothing), label_smoothing=smoothing))
        fit_features(run, NeverStop())
        reporter_sink = ListSink()
        reporter = ProgressReporter(reporter_sink, "job", len(run.train_loader), 0.0)
        shuffle = run.loaders.state_dict()
        labels = [label for _, label in run.train_loader]
        run.loaders.load_state_dict(shuffle)  # the epoch below sees the same order
        with network_outputs(run) as logits:
            loop.train_epoch(run, 1, reporter, NeverStop())
        first = next(iter(of(BatchProgress, reporter_sink.events))).points[0].loss
        expected = torch.nn.functional.cross_entropy(
            logits[0], labels[0], label_smoothing=smoothing
        )
        other = torch.nn.functional.cross_entropy(
            logits[0], labels[0], label_smoothing=0.3 - smoothing
        )
        # At initialisation the logits are nearly uniform, so the two losses differ by ~1e-3
        # only: the reported loss must be far closer to the configured one than to the other.
        assert abs(first - float(expected)) * 20 < abs(first - float(other))


def test_grad_clip_norm_bounds_the_step(recordings: list[Recording], tmp_path: Path) -> None:
    norms = {}
    for clip in (None, 1e-3):
        run = prepare(make_spec(recordings, tmp_path / str(clip), grad_clip_norm=clip))
        fit_features(run, NeverStop())
        stats = loop.train_epoch(run, 1, None, NeverStop())
        grads = [p.grad for p in run.trainable if p.grad is not None]
        norms[clip] = float(torch.nn.utils.get_total_norm(grads))
        assert stats.gradient_norm is not None and stats.gradient_norm > 1e-3  # before clipping
    assert norms[1e-3] <= 1e-3 * 1.001 < norms[None]


def test_precision_bf16_autocasts_on_a_cpu_that_has_it(
    recordings: list[Recording], tmp_path: Path
) -> None:
    spec = make_spec(recordings, tmp_path, precision="bf16")
    if not cpu_has_bf16():
        with pytest.raises(AcceleratorUnavailable, match="bfloat16"):
            prepare(spec)
        return
    run = prepare(spec)
    fit_features(run, NeverStop())
    with network_outputs(run) as logits:
        loop.train_epoch(run, 1, None, NeverStop())
    assert {x.dtype for x in logits} == {torch.bfloat16}
    plain = resolve_precision(make_spec(recordings, tmp_path).config, torch.device("cpu"))
    assert plain.name == "fp32"
    gpu = torch.device("cuda")
    assert resolve_precision(make_spec(recordings, tmp_path).config, gpu).name == "fp16"
    assert (
        resolve_precision(make_spec(recordings, tmp_path, precision="fp32").config, gpu).dtype
        is None
    )


def test_warmup_is_per_step_and_bounded_by_the_run(
    recordings: list[Recording], tmp_path: Path
) -> None:
    """The README's example: 5 warm-up epochs in a short run would never reach the rate."""
    sink = ListSink()
    train(make_spec(recordings, tmp_path, epochs=2, warmup_epochs=5), sink, NeverStop())
    (started,) = of(JobStarted, sink.events)
    assert started.warmup_steps == started.total_batches == 3  # half of 2 x 3 steps
    (warning,) = of(JobWarning, sink.events)
    assert "warm-up cut to 3 steps" in warning.message
    rates = [p.learning_rate for e in of(BatchProgress, sink.events) for p in e.points]
    assert rates[:3] == pytest.approx([0.002 * k / 4 for k in (1, 2, 3)])
    assert rates[3] == pytest.approx(0.002)  # the base rate, reached after warm-up


# --- seed -----------------------------------------------------------------------------------


class HoldAfter:
    def __init__(self, reads: int) -> None:
        self.reads = reads

    @property
    def value(self) -> int:
        self.reads -= 1
        return Preempt.PAUSE if self.reads < 0 else Preempt.NONE


def test_the_seed_in_use_is_reported_and_kept_on_resume(
    recordings: list[Recording], tmp_path: Path
) -> None:
    seeded = ListSink()
    train(make_spec(recordings, tmp_path / "seeded"), seeded, NeverStop())
    assert of(JobStarted, seeded.events)[0].seed == 3

    first, second = ListSink(), ListSink()
    drawn = make_spec(recordings, tmp_path / "drawn", seed=None, epochs=2)
    with pytest.raises(Held):
        train(drawn, first, NeverStop(), hold=HoldAfter(4))
    with structlog.testing.capture_logs() as logs:
        train(drawn, second, NeverStop())
    seed = of(JobStarted, first.events)[0].seed
    assert seed is not None and of(JobStarted, second.events)[0].seed == seed
    (resuming,) = [e for e in logs if e["event"] == "resuming"]
    assert resuming["seed"] == seed


# --- data parallelism and threads -----------------------------------------------------------


def test_data_parallel_metrics_count_each_sample_once(
    recordings: list[Recording], tmp_path: Path
) -> None:
    """Two ranks over 35 training recordings: the distributed sampler gives each 18 (one
    repeated to pad), and the epoch's metrics count 35. The ranks run one after the other in a
    one-process group, so each one's all-reduce returns its own share."""
    dist.init_process_group("gloo", init_method=free_init_method(), rank=0, world_size=1)
    try:
        shares = []
        for rank in (0, 1):
            info = DistInfo(rank=rank, world_size=2)
            run = prepare(make_spec(recordings, tmp_path / str(rank)), info)
            assert len(run.train_loader.sampler) == 18  # type: ignore[arg-type]
            fit_features(run, NeverStop())
            shares.append(loop.train_epoch(run, 1, None, NeverStop()).samples)
    finally:
        dist.destroy_process_group()
    assert shares == [18, 17] and sum(shares) == 35


def test_threads_per_training_process() -> None:
    assert train_threads(3, concurrent_jobs=4, devices=1) == 3
    from services.worker.hardware import usable_cores

    cores = usable_cores()
    assert train_threads(0, concurrent_jobs=1, devices=1) == cores
    assert train_threads(0, concurrent_jobs=2 * cores, devices=1) == 1


class ThreadsSeen(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.tensor(float(torch.get_num_threads())), 0


def test_loader_workers_get_their_share_of_threads() -> None:
    from services.worker.data import make_loader

    loader = make_loader(
        ThreadsSeen(), batch_size=2, num_workers=1, shuffle=False, seed=0, worker_threads=2
    )
    (threads, _), *_ = list(loader)
    assert threads.tolist() == [2.0, 2.0]

"""A job's training run, built before its first epoch: what to train (`TrainSpec`) and the
objects that train it (`Run`), made by `prepare`.

`Run` is frozen: nothing assigns into it after `prepare`. What changes while training lives
inside its stateful parts (model, optimiser, schedule, early stopping, scaler, feature
statistics, the loaders' generators), each with a `state_dict`, so one table (`state.py`)
saves and restores them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from services.worker import ddp
from services.worker.augment import Augment
from services.worker.bounds import check_batch_fits
from services.worker.data import (
    WaveformDataset,
    check_recordings,
    check_split,
    feature_params,
    make_loader,
    resolve_seed,
    signal_format,
)
from services.worker.ddp import SINGLE, DistInfo
from services.worker.features import FeatureExtractor, FeatureParams, LogMel, finish_stats
from services.worker.features import compute_stats as feature_sums
from services.worker.finetune import Init, init_from_job
from services.worker.hardware import Precision, resolve_device, resolve_precision
from services.worker.loss import Criterion
from services.worker.model import build_model
from services.worker.optim import EarlyStopping, LrSchedule, build_optimizer
from services.worker.progress import StopSignal
from services.worker.split import Split, stratified_split
from shared.config import TrainingConfig
from shared.datasets import Recording
from shared.storage import StorageConfig

Batches = DataLoader[tuple[torch.Tensor, int]]


@dataclass(frozen=True)
class TrainSpec:
    """One job's training run: what to train and where its artifacts go."""

    job_id: str
    config: TrainingConfig
    recordings: list[Recording]
    out_dir: Path
    worker: str = ""
    attempt: int = 1
    progress_interval_s: float = 0.25
    export_onnx: bool = True
    seed: int | None = None
    """The resolved seed (see `data.resolve_seed`); None resolves it here (single process)."""
    emitted: tuple[int, int] = (0, 0)
    """(epoch, batch) of the last batch point an earlier attempt emitted: a run resumed after a
    crash re-trains from its checkpoint but emits none of these again."""
    emitted_epochs: int = 0
    """Epochs whose EpochCompleted an earlier attempt emitted."""
    threads: int = 0
    """Torch threads of the training process (set by its owner, see `process.py`), shared by
    its loader workers; 0: torch's default."""
    storage: StorageConfig | None = None
    """The blob store each checkpoint and the ONNX model are pushed to as they are written
    (see `artifact_sync.py`); None: they stay in `out_dir`."""


@dataclass
class Loaders:
    """The training and validation loaders, and their generators' states as the current
    epoch began (what a mid-epoch pause checkpoint holds, so the resumed epoch reshuffles
    alike and skips the batches already done)."""

    train: Batches
    val: Batches
    test: Batches | None = None
    """The test set's loader (None without one); unshuffled, so no state to keep."""
    epoch_start: dict[str, torch.Tensor] = field(default_factory=dict)

    def _named(self) -> tuple[tuple[str, Batches], ...]:
        return (("train", self.train), ("val", self.val))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generators now (shuffle order, worker seeds)."""
        return {n: ld.generator.get_state() for n, ld in self._named() if ld.generator is not None}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Put the generators back to `state`, which becomes the epoch's start."""
        for name, loader in self._named():
            if name in state and loader.generator is not None:
                loader.generator.set_state(state[name])
        self.epoch_start = dict(state)

    def begin_epoch(self, epoch: int) -> None:
        if isinstance(self.train.sampler, DistributedSampler):
            self.train.sampler.set_epoch(epoch)
        self.epoch_start = self.state_dict()


@dataclass(frozen=True)
class Run:
    """Everything built before the first epoch (exposed for tests and the benchmark)."""

    spec: TrainSpec
    info: DistInfo
    device: torch.device
    seed: int
    split: Split
    params: FeatureParams
    loaders: Loaders
    network: nn.Module
    """The model itself; `model` may be its DDP wrapper."""
    model: nn.Module
    optimizer: torch.optim.AdamW
    schedule: LrSchedule
    early: EarlyStopping
    precision: Precision
    scaler: torch.amp.GradScaler
    features: FeatureExtractor
    """Log-mel and normalisation; its statistics are set by `fit_features` (or a checkpoint)."""
    trainable: list[nn.Parameter]
    criterion: Criterion
    augment: Augment
    counted: int
    """Training samples of this rank that count in the metrics: all but the distributed
    sampler's padding (which repeats a few samples so that every rank has as many batches)."""
    init: Init | None = None

    @property
    def config(self) -> TrainingConfig:
        return self.spec.config

    @property
    def train_loader(self) -> Batches:
        return self.loaders.train

    @property
    def val_loader(self) -> Batches:
        return self.loaders.val


def prepare(spec: TrainSpec, info: DistInfo = SINGLE, *, initialise: bool = True) -> Run:
    """Device, model, split and loaders; fails fast (device, weights, data) before any epoch.
    `initialise`: load `init_from_job`'s weights (a resumed run takes its own instead)."""
    config = spec.config
    device = resolve_device(config, info.rank)
    precision = resolve_precision(config, device)
    seed = spec.seed if spec.seed is not None else resolve_seed(config)
    torch.manual_seed(seed)
    check_recordings(spec.recordings, config)
    split = stratified_split(spec.recordings, config.validation_split, seed, config.test_split)
    check_split(split.train, split.val, config)
    network = build_model(config, len(split.classes))
    init = (
        init_from_job(network, config, split.classes, spec.out_dir.parent) if initialise else None
    )
    network = network.to(device)
    if precision.channels_last:
        network = network.to(memory_format=torch.channels_last)
    fmt = signal_format(spec.recordings, config)
    params = feature_params(fmt, config)
    check_batch_fits(network, params, config.batch_size, device)
    unfitted = torch.zeros(config.n_mels), torch.ones(config.n_mels)
    loaders = _loaders(split, fmt, spec, info, seed, pin=device.type == "cuda")
    return Run(
        spec=spec,
        info=info,
        device=device,
        seed=seed,
        split=split,
        params=params,
        loaders=loaders,
        network=network,
        model=ddp.wrap(network, info, device),
        optimizer=build_optimizer(network, config),
        schedule=LrSchedule.from_config(config, len(loaders.train)),
        early=EarlyStopping(config.early_stop_patience),
        precision=precision,
        scaler=torch.amp.GradScaler(device.type, enabled=precision.scaled),
        features=FeatureExtractor(params, *unfitted).to(device).eval(),
        trainable=[p for p in network.parameters() if p.requires_grad],
        criterion=Criterion.from_config(
            config, [r.label for r in split.train], split.classes, device
        ),
        augment=Augment.from_config(config, fmt.sample_rate, params.frames, config.n_mels),
        counted=len(range(info.rank, len(split.train), info.world_size)),
        init=init,
    )


def _loaders(
    split: Split, fmt: Any, spec: TrainSpec, info: DistInfo, seed: int, pin: bool
) -> Loaders:
    config = spec.config
    train_ds = WaveformDataset(split.train, split.classes, fmt)
    sampler: DistributedSampler[int] | None = None
    if info.enabled:
        sampler = DistributedSampler(
            train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed
        )
    common: dict[str, Any] = {
        "batch_size": config.batch_size,
        "num_workers": config.num_workers,
        "seed": seed + 1,
        "pin_memory": pin,
        "worker_threads": max(1, spec.threads // max(1, config.num_workers)),
    }

    def held_out(recordings: list[Recording]) -> Batches:
        # Each rank assesses every world_size-th sample (see loop.assess), no padding.
        part: Any = WaveformDataset(recordings, split.classes, fmt)
        if info.enabled:
            part = Subset(part, list(range(info.rank, len(part), info.world_size)))
        return make_loader(part, shuffle=False, **common)

    return Loaders(
        train=make_loader(train_ds, shuffle=True, sampler=sampler, **common),
        val=held_out(split.val),
        test=held_out(split.test) if split.test else None,
    )


def fit_features(run: Run, stop: StopSignal) -> FeatureExtractor:
    """Normalisation statistics over the training split (all ranks' shards), on the device."""
    logmel = LogMel(run.params).to(run.device)
    sums = feature_sums(run.train_loader, logmel, run.device, stop)
    set_feature_stats(run, *finish_stats(*ddp.all_sum(run.info, *sums)))
    return run.features


def set_feature_stats(run: Run, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Per-bin mean and standard deviation (from the training split, or a checkpoint), with
    whatever the normalisation derives from them built by its own constructor."""
    fitted = FeatureExtractor(run.params, mean, std).to(run.device)
    run.features.load_state_dict(fitted.state_dict())

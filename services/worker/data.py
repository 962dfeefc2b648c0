"""Recordings → tensors: selecting them, the waveform dataset and its loaders (the split is in
`split.py`).

Waveforms are loaded as float32 at one sample rate and one length (see `bounds.py`), so batches
stack without collation tricks: real ones as (samples,), IQ ones as (2, samples) with I and Q
kept apart (never averaged: the sign of a frequency lives in their phase). A job is IQ when any
of its recordings is; its real recordings then enter as `I + j0`. Features are computed later,
on the training device (see `features.py`).
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import asyncpg
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from services.worker.bounds import MAX_NUM_SAMPLES, fit_length, frames_needed, resample
from services.worker.errors import DatasetError
from services.worker.features import FeatureParams
from shared.config import TrainingConfig
from shared.datasets import Recording, load_signal, select_recordings
from shared.splits import split_problem


async def job_recordings(conn: asyncpg.Connection, config: TrainingConfig) -> list[Recording]:
    """The recordings of `config.dataset` that pass `min_snr_db` and `only_approved`."""
    return await select_recordings(
        conn, config.dataset, min_snr_db=config.min_snr_db, only_approved=config.only_approved
    )


def resolve_seed(config: TrainingConfig) -> int:
    """The job's seed, or a fresh random one. Resolved once per job, by the worker, so every
    data-parallel rank splits and shuffles alike; logged, so a run can be repeated."""
    return config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")


def check_recordings(recordings: Sequence[Recording], config: TrainingConfig) -> None:
    """Fail with a message naming the filters when the selection cannot train a classifier."""
    filters = (
        f"dataset {config.dataset!r} with min_snr_db={config.min_snr_db}"
        f" and only_approved={str(config.only_approved).lower()}"
    )
    if not recordings:
        raise DatasetError(
            f"no recordings to train on: {filters} selects none. Import or synthesize"
            " recordings (`heimdall data synth`), or relax the filters."
        )
    labels = {r.label for r in recordings}
    if len(labels) < 2:
        raise DatasetError(
            f"{filters} selects {len(recordings)} recordings of a single class"
            f" ({next(iter(labels))!r}); a classifier needs at least two classes."
        )


def check_split(
    train: Sequence[Recording], val: Sequence[Recording], config: TrainingConfig
) -> None:
    """Fail at once, with the counts, when the split leaves nothing to validate on."""
    if config.validation_split > 0 and not val:
        counts = Counter(r.label for r in [*train, *val])
        raise DatasetError(
            split_problem(counts, config.validation_split)
            or f"validation_split={config.validation_split:g} leaves no validation recordings"
        )


@dataclass(frozen=True, slots=True)
class SignalFormat:
    """How every waveform is shaped before it reaches the model."""

    sample_rate: int
    num_samples: int
    channels: int = 1
    """1: real, (samples,); 2: IQ, (2, samples)."""


def signal_format(recordings: Sequence[Recording], config: TrainingConfig) -> SignalFormat:
    """The job's rate (`config.sample_rate`, else the most common one), its length
    (`config.num_samples`, else the longest recording at that rate, at most MAX_NUM_SAMPLES,
    at least one FFT window) and its channels (IQ when any recording is). Of rates equally
    common, the highest wins: resampling down loses less than resampling up invents."""
    counts = Counter(r.sample_rate for r in recordings)
    rate = config.sample_rate or max(counts, key=lambda r: (counts[r], r))
    longest = max(math.ceil(r.duration_s * rate) for r in recordings)
    length = config.num_samples or min(longest, MAX_NUM_SAMPLES)
    channels = 2 if any(r.channels == 2 for r in recordings) else 1
    return SignalFormat(sample_rate=rate, num_samples=max(length, config.n_fft), channels=channels)


def feature_params(fmt: SignalFormat, config: TrainingConfig) -> FeatureParams:
    return FeatureParams(
        sample_rate=fmt.sample_rate,
        num_samples=fmt.num_samples,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        n_mels=config.n_mels,
        channels="iq" if fmt.channels == 2 else "real",
    )


def load_waveform(rec: Recording, fmt: SignalFormat) -> torch.Tensor:
    """One recording at the job's rate, length and channels; reads only the frames needed."""
    need = frames_needed(fmt.num_samples, rec.sample_rate, fmt.sample_rate)
    samples, rate = load_signal(rec.path, need)
    data = torch.from_numpy(np.ascontiguousarray(samples))
    if fmt.channels == 2:
        wave = torch.complex(data[0], data[1] if data.shape[0] > 1 else torch.zeros_like(data[0]))
        wave = fit_length(resample(wave, rate, fmt.sample_rate), fmt.num_samples)
        return torch.stack([wave.real, wave.imag]).float()
    wave = fit_length(resample(data[0], rate, fmt.sample_rate), fmt.num_samples)
    return wave.float()


class WaveformDataset(Dataset[tuple[torch.Tensor, int]]):
    """Waveforms of a fixed length, rate and channel count, with their class index."""

    def __init__(
        self, recordings: Sequence[Recording], classes: Sequence[str], fmt: SignalFormat
    ) -> None:
        self.recordings = list(recordings)
        self.index = {name: i for i, name in enumerate(classes)}
        self.fmt = fmt

    def __len__(self) -> int:
        return len(self.recordings)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rec = self.recordings[i]
        return load_waveform(rec, self.fmt), self.index[rec.label]


def _init_worker(threads: int, worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(threads)


def make_loader(
    dataset: Dataset[tuple[torch.Tensor, int]],
    *,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int,
    pin_memory: bool = False,
    sampler: Sampler[int] | None = None,
    worker_threads: int = 1,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A DataLoader with `num_workers` worker processes (kept alive across epochs, each with
    `worker_threads` torch threads) and a seeded shuffle, so a seeded job sees batches in the
    same order every run."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=partial(_init_worker, worker_threads) if num_workers > 0 else None,
        generator=generator,
        pin_memory=pin_memory,
        drop_last=False,
    )

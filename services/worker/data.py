"""Recordings → tensors: selecting them, the waveform dataset and its loaders (the split is in
`split.py`).

Waveforms are loaded as mono float32 at one sample rate and one length (the dataset's most
common rate, its longest recording), so batches stack without collation tricks. Features are
computed later, on the training device (see `features.py`).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import asyncpg
import numpy as np
import torch
import torchaudio.functional as AF
from torch.utils.data import DataLoader, Dataset, Sampler

from services.worker.errors import DatasetError
from shared.config import TrainingConfig
from shared.datasets import Recording, load_signal, select_recordings


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


@dataclass(frozen=True, slots=True)
class SignalFormat:
    """How every waveform is shaped before it reaches the model."""

    sample_rate: int
    num_samples: int


def signal_format(recordings: Sequence[Recording], n_fft: int) -> SignalFormat:
    """The most common sample rate and the longest duration (at least one FFT window)."""
    rate = Counter(r.sample_rate for r in recordings).most_common(1)[0][0]
    longest = max(round(r.duration_s * rate) for r in recordings)
    return SignalFormat(sample_rate=rate, num_samples=max(longest, n_fft))


class WaveformDataset(Dataset[tuple[torch.Tensor, int]]):
    """Mono waveforms of a fixed length and rate, with their class index."""

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
        samples, rate = load_signal(rec.path)
        wave = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=0)))
        if rate != self.fmt.sample_rate:
            wave = AF.resample(wave, rate, self.fmt.sample_rate)
        n = self.fmt.num_samples
        wave = (
            wave[:n] if wave.numel() >= n else torch.nn.functional.pad(wave, (0, n - wave.numel()))
        )
        return wave.float(), self.index[rec.label]


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

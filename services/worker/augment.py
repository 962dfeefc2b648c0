"""Augmentation of training batches: on the waveform (random time crop, additive noise at a
random SNR, a random frequency shift for IQ), then SpecAugment masks on the features.

Only `loop.train_epoch` calls it, on training batches, so validation, test and the exported
model never see it. All of it runs on the training device from torch's global generator of that
device, whose state every checkpoint holds: a paused and resumed run augments exactly as an
uninterrupted one. Everything is off by default (the seed's behaviour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shared.config import TrainingConfig


@dataclass(frozen=True)
class Augment:
    time_crop: float = 0.0
    noise_snr_db: tuple[float, float] | None = None
    freq_shift_hz: float = 0.0
    sample_rate: int = 1
    time_masks: int = 0
    time_mask_width: float = 0.0
    freq_masks: int = 0
    freq_mask_width: float = 0.0
    frames: int = 1
    """Frames and bands of the unpadded spectrogram: masks stay inside it."""
    bands: int = 1

    @classmethod
    def from_config(
        cls, config: TrainingConfig, sample_rate: int, frames: int, bands: int
    ) -> Augment:
        low = config.aug_noise_snr_db_min
        return cls(
            time_crop=config.aug_time_crop,
            noise_snr_db=None if low is None else (low, config.aug_noise_snr_db_max),
            freq_shift_hz=config.aug_freq_shift_hz,
            sample_rate=sample_rate,
            time_masks=config.aug_time_masks,
            time_mask_width=config.aug_time_mask_width,
            freq_masks=config.aug_freq_masks,
            freq_mask_width=config.aug_freq_mask_width,
            frames=frames,
            bands=bands,
        )

    def wave(self, x: torch.Tensor) -> torch.Tensor:
        """Waveforms (batch, samples) or IQ (batch, 2, samples), on the device."""
        if self.time_crop > 0:
            x = time_crop(x, self.time_crop)
        if self.noise_snr_db is not None:
            x = add_noise(x, *self.noise_snr_db)
        if self.freq_shift_hz > 0 and is_iq(x):
            x = freq_shift(x, self.freq_shift_hz, self.sample_rate)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised features (batch, channels, bands, frames): masked regions get 0, the
        training split's mean."""
        if self.time_masks and self.time_mask_width > 0:
            x = mask(x, -1, self.time_masks, self.time_mask_width, self.frames)
        if self.freq_masks and self.freq_mask_width > 0:
            x = mask(x, -2, self.freq_masks, self.freq_mask_width, self.bands)
        return x


def is_iq(x: torch.Tensor) -> bool:
    return x.dim() == 3 and x.shape[1] == 2


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(batch,) → broadcastable against `x`."""
    return values.reshape(-1, *([1] * (x.dim() - 1)))


def time_crop(x: torch.Tensor, most: float) -> torch.Tensor:
    """Keep a random window of (1 - `most`) to all of each waveform, moved to the start; zero
    after it (as a shorter recording is padded)."""
    batch, n = x.shape[0], x.shape[-1]
    keep = torch.rand(batch, device=x.device) * most
    length = ((1.0 - keep) * n).ceil().long().clamp(1, n)
    start = (torch.rand(batch, device=x.device) * (n - length + 1)).floor().long()
    t = torch.arange(n, device=x.device)
    index = (start[:, None] + t[None, :]).clamp_max(n - 1)
    inside = (t[None, :] < length[:, None]).to(x.dtype)
    if x.dim() == 3:
        index, inside = index[:, None, :].expand_as(x), inside[:, None, :]
    return torch.gather(x, -1, index) * inside


def add_noise(x: torch.Tensor, low_db: float, high_db: float) -> torch.Tensor:
    """White Gaussian noise at an SNR drawn per waveform from [low_db, high_db], relative to
    the waveform's own power (I and Q alike: the ratio holds for the complex signal)."""
    power = x.pow(2).flatten(1).mean(dim=1)
    snr_db = low_db + torch.rand(x.shape[0], device=x.device) * (high_db - low_db)
    sigma = (power / torch.pow(10.0, snr_db / 10.0)).sqrt()
    return x + torch.randn_like(x) * _per_sample(sigma, x)


def freq_shift(x: torch.Tensor, most_hz: float, sample_rate: int) -> torch.Tensor:
    """IQ (batch, 2, samples) times exp(j·2π·f·t), f drawn per waveform from [-most, +most]."""
    n = x.shape[-1]
    shift = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * most_hz
    t = torch.arange(n, device=x.device, dtype=torch.float64) / sample_rate
    phase = (2 * math.pi * shift.double()[:, None] * t[None, :]).to(x.dtype)
    cos, sin = phase.cos(), phase.sin()
    i, q = x[:, 0], x[:, 1]
    return torch.stack([i * cos - q * sin, i * sin + q * cos], dim=1)


def mask(x: torch.Tensor, dim: int, count: int, width: float, size: int) -> torch.Tensor:
    """SpecAugment: `count` masks along `dim`, each of a width drawn from [0, width · size]
    at a random start within the first `size` positions, set to 0 (one draw per example)."""
    batch, n = x.shape[0], x.shape[dim]
    size = max(1, min(size, n))
    widest = math.floor(width * size)  # never wider than the share asked for
    widths = (torch.rand(batch, count, device=x.device) * (widest + 1)).floor()
    starts = (torch.rand(batch, count, device=x.device) * (size - widths + 1)).floor()
    pos = torch.arange(n, device=x.device, dtype=widths.dtype)
    hit = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])  # (B, count, n)
    keep = (~hit.any(dim=1)).to(x.dtype)  # (B, n)
    shape = [batch] + [1] * (x.dim() - 1)
    shape[dim] = n
    return x * keep.reshape(shape)

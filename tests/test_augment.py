"""What each augmentation field means, from a TrainingConfig to the batches: the noise's SNR
stays in [min, max], masks are as many and as wide as configured, a crop keeps at least its
share, a frequency shift stays within ±x Hz. Each test fails when its field is ignored (a
default, or another field, used in its place)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from support import TINY

from services.worker.augment import Augment
from shared.config import TrainingConfig

RATE, FRAMES, BANDS = 8000, 40, 32
BATCH = 256


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


def augment(**fields: Any) -> Augment:
    config = TrainingConfig(**{**TINY, **fields})
    config.check()
    return Augment.from_config(config, RATE, FRAMES, BANDS)


@pytest.mark.parametrize(("low", "high"), [(0.0, 0.0), (20.0, 20.0), (-5.0, 15.0)])
def test_noise_snr_stays_within_min_and_max(low: float, high: float) -> None:
    for x in (torch.randn(BATCH, 4000), torch.randn(BATCH, 2, 4000)):
        noisy = augment(aug_noise_snr_db_min=low, aug_noise_snr_db_max=high).wave(x)
        noise = (noisy - x).flatten(1).pow(2).mean(1)
        snr = 10 * torch.log10(x.flatten(1).pow(2).mean(1) / noise)
        assert float(snr.min()) > low - 0.5 and float(snr.max()) < high + 0.5
        assert float(snr.max() - snr.min()) > 0.8 * (high - low)  # the range is used


def _masked(out: torch.Tensor, dim: int) -> torch.Tensor:
    """Positions along `dim` (-1 frames, -2 bands) zeroed in every cell across the other."""
    return (out == 0).all(dim=-2 if dim == -1 else -1).sum(dim=-1).flatten()


@pytest.mark.parametrize(
    ("count", "width", "size", "dim"),
    [
        ("aug_time_masks", "aug_time_mask_width", FRAMES, -1),
        ("aug_freq_masks", "aug_freq_mask_width", BANDS, -2),
    ],
)
def test_masks_are_as_many_and_as_wide_as_configured(
    count: str, width: str, size: int, dim: int
) -> None:
    x = torch.ones(BATCH, 1, BANDS, FRAMES)
    for share in (0.05, 0.3):
        masked = _masked(augment(**{count: 1, width: share}).features(x), dim)
        assert int(masked.max()) == math.floor(share * size)
    one = _masked(augment(**{count: 1, width: 0.1}).features(x), dim).float().mean()
    three = _masked(augment(**{count: 3, width: 0.1}).features(x), dim).float().mean()
    assert float(three) > 2 * float(one)


@pytest.mark.parametrize("most", [0.1, 0.6])
def test_time_crop_keeps_at_least_its_share(most: float) -> None:
    n = 1000
    cropped = augment(aug_time_crop=most).wave(torch.ones(BATCH, n))
    cut = (cropped == 0).sum(dim=1)
    assert int(cut.max()) <= most * n and int(cut.max()) >= 0.9 * most * n


@pytest.mark.parametrize("most_hz", [50.0, 1500.0])
def test_frequency_shift_stays_within_plus_minus_its_hertz(most_hz: float) -> None:
    dc = torch.stack([torch.ones(BATCH, 800), torch.zeros(BATCH, 800)], dim=1)
    shifted = augment(aug_freq_shift_hz=most_hz).wave(dc)
    z = torch.complex(shifted[:, 0].double(), shifted[:, 1].double())
    freq = torch.angle(z[:, 1:] * z[:, :-1].conj()).mean(dim=1) * RATE / (2 * math.pi)
    assert float(freq.abs().max()) <= most_hz + 1e-3
    assert float(freq.max()) > 0.8 * most_hz and float(freq.min()) < -0.8 * most_hz

"""Bounds on what one recording and one batch may cost: one sample rate, a capped length, and
a memory estimate checked before the first batch.

Every recording is resampled to the job's rate (`sample_rate`, or the dataset's most common
one) and cropped or zero-padded to the job's length (`num_samples`, or the longest recording,
at most MAX_NUM_SAMPLES). Only the frames that length needs are read from disk, at most
MAX_READ_FRAMES, so a 4000 s recording at 192 kHz costs what its first seconds cost.
"""

from __future__ import annotations

import math

import psutil
import torch
from torch import nn

from services.worker.errors import DatasetError
from services.worker.features import FeatureParams
from shared.signal_info import MAX_NUM_SAMPLES

__all__ = ["MAX_NUM_SAMPLES", "check_batch_fits", "fit_length", "frames_needed", "resample"]

MAX_READ_FRAMES = 1 << 24
"""The most frames read from one file (16,777,216: 64 MiB of mono float32) before resampling."""

MEMORY_SHARE = 0.8
"""Of the memory free when a job starts, the share a batch may plan to use."""


def frames_needed(num_samples: int, file_rate: int, rate: int) -> int:
    """Frames of a file at `file_rate` that give `num_samples` at `rate` (and one spare),
    never more than MAX_READ_FRAMES."""
    return min(MAX_READ_FRAMES, math.ceil(num_samples * file_rate / rate) + 1)


def resample(wave: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Resample the last dimension from `orig` to `new` Hz in the frequency domain (real or
    complex input). Its cost is one FFT of the input and one of the output, for any ratio:
    a polyphase kernel (torchaudio's) grows with the reduced ratio's terms, which for rates
    such as 8001 Hz and 100 MHz needs gigabytes."""
    if orig == new or wave.shape[-1] == 0:
        return wave
    length = wave.shape[-1]
    out = max(1, round(length * new / orig))
    scale = out / length
    if not wave.is_complex():
        spec = torch.fft.rfft(wave.double())
        keep = min(spec.shape[-1], out // 2 + 1)
        return (torch.fft.irfft(spec[..., :keep], n=out) * scale).to(wave.dtype)
    spec = torch.fft.fft(wave.to(torch.complex128))
    half = min(length, out) // 2
    body = torch.zeros((*spec.shape[:-1], out), dtype=spec.dtype)
    body[..., :half] = spec[..., :half]
    body[..., out - (min(length, out) - half) :] = spec[..., length - (min(length, out) - half) :]
    return (torch.fft.ifft(body) * scale).to(wave.dtype)


def fit_length(wave: torch.Tensor, n: int) -> torch.Tensor:
    """Crop the last dimension to its first `n` samples, or zero-pad it to `n`."""
    have = wave.shape[-1]
    return wave[..., :n] if have >= n else nn.functional.pad(wave, (0, n - have))


def activation_bytes_per_pixel(network: nn.Module, channels: int = 1, side: int = 64) -> float:
    """Bytes autograd keeps per input pixel for one sample in a training step of `network`,
    measured on a `side` x `side` probe (ConvNeXt is fully convolutional: its activations grow
    with the input's area)."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    device = next(network.parameters()).device
    was_training = network.training
    network.train()
    probe = torch.zeros(1, channels, side, side, device=device).normal_()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = network(probe)
        del out
    finally:
        network.train(was_training)
    return saved / (side * side)


def batch_bytes(
    *,
    batch_size: int,
    num_samples: int,
    channels: int,
    n_fft: int,
    frames: int,
    image_pixels: int,
    per_pixel: float,
) -> int:
    """A batch's planned memory: waveforms (loaded, resampled, copied), the STFT and its power,
    and the network's activations, which dominate."""
    wave = 4 * num_samples * channels * 4
    stft = 8 * n_fft * frames * 3
    return int(batch_size * (wave + stft + image_pixels * (per_pixel + 4)))


def available_bytes(device: torch.device) -> int:
    """Memory this job may plan to use on `device`: a share of what is free now."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_SHARE)
    return int(psutil.virtual_memory().available * MEMORY_SHARE)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_batch_fits(
    network: nn.Module, params: FeatureParams, batch_size: int, device: torch.device
) -> int:
    """Fail at once, before any batch, when a training batch cannot fit in the memory free on
    `device`; returns the estimate (bytes)."""
    height, width = params.image
    need = batch_bytes(
        batch_size=batch_size,
        num_samples=params.num_samples,
        channels=2 if params.channels == "iq" else 1,
        n_fft=params.n_fft,
        frames=params.frames,
        image_pixels=height * width,
        per_pixel=activation_bytes_per_pixel(network),
    )
    budget = available_bytes(device)
    if need > budget:
        what = (
            f"{batch_size} recordings of {params.num_samples} samples at {params.sample_rate} Hz"
            f" → spectrograms of {height}x{width}"
        )
        raise DatasetError(
            f"a training batch needs about {_size(need)} ({what}), more than the {_size(budget)}"
            " this worker can give it; lower batch_size or num_samples (or sample_rate), or"
            " raise hop_length"
        )
    return need

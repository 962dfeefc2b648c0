"""Spectrogram features, computed on the training device and normalised with train-split
statistics; the same features as ONNX-exportable ops (`ExportSpectrogram`).

Real (one-channel) recordings give a log-mel spectrogram: torchaudio's MelSpectrogram, the
one-sided spectrum (0 to rate/2) on the mel scale.

IQ (two-channel) recordings are complex signals `I + jQ`, and the sign of a frequency is half of
what they carry (+1 kHz and -1 kHz differ only there). Their features are the log power of the
two-sided, centred spectrum (fftshift: -rate/2 at the top row... to +rate/2 at the bottom),
pooled into `n_mels` **linear** bands of equal width rate/n_mels over the whole two-sided axis:
band k is a triangle centred at -rate/2 + (k + 1/2)·rate/n_mels, reaching zero at its
neighbours' centres. Linear, not mel: at baseband 0 Hz is the tuned frequency, not the bottom of
a hearing range, and a mel-like layout would spend its resolution around DC, where receivers
leave their LO leakage.

Spectrograms smaller than ConvNeXt's 32 x 32 are padded with the log of silence (LOG_FLOOR)
before normalising; padded rows get the statistics of all bins. Exact zeros after normalising
would give ConvNeXt's first LayerNorm an all-zero patch (zero variance), whose gradient is
1/sqrt(eps): first-batch gradient norms of ~1e9 instead of ~10.

The ONNX exporter cannot express a complex STFT, so the exported model computes the same
spectrogram as a strided convolution with a windowed DFT basis; the export check compares that
model against the training one on real inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torchaudio
from torch import nn

from services.worker.errors import TrainingCancelled
from services.worker.progress import StopSignal

LOG_FLOOR = 1e-6
"""Added to the power before the log, so silent (zero-padded) frames stay finite."""

MIN_SIDE = 32
"""ConvNeXt downsamples by 32 (stem 4, then 2 three times): a smaller spectrogram (short
recordings at a large hop, or few mel bins) would not reach the head."""

Channels = Literal["real", "iq"]


@dataclass(frozen=True, slots=True)
class FeatureParams:
    """Everything needed to rebuild the feature extractor; saved with every checkpoint."""

    sample_rate: int
    num_samples: int
    n_fft: int
    hop_length: int
    n_mels: int
    channels: Channels = "real"
    """`real`: (batch, samples) in, one-sided log-mel; `iq`: (batch, 2, samples) in, two-sided
    centred log-power in linear bands."""

    @property
    def frames(self) -> int:
        return 1 + self.num_samples // self.hop_length

    @property
    def bands(self) -> str:
        return "mel" if self.channels == "real" else "linear-two-sided"

    @property
    def image(self) -> tuple[int, int]:
        """(height, width) of what the network sees, after padding to MIN_SIDE."""
        return max(self.n_mels, MIN_SIDE), max(self.frames, MIN_SIDE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hann(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft)


def two_sided_bands(params: FeatureParams) -> torch.Tensor:
    """(n_fft, n_mels) triangular linear bands over the centred two-sided frequency axis."""
    freqs = torch.fft.fftshift(torch.fft.fftfreq(params.n_fft, 1.0 / params.sample_rate))
    width = params.sample_rate / params.n_mels
    centres = -params.sample_rate / 2 + (torch.arange(params.n_mels) + 0.5) * width
    return (1 - (freqs.double()[:, None] - centres.double()[None, :]).abs() / width).clamp_min(0)


class LogMel(nn.Module):
    """Waveforms → log spectrogram (batch, 1, n_mels, frames): log-mel for real input
    (batch, samples), two-sided linear bands for IQ input (batch, 2, samples)."""

    fb: torch.Tensor
    window: torch.Tensor

    def __init__(self, params: FeatureParams) -> None:
        super().__init__()
        self.params = params
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=params.sample_rate,
            n_fft=params.n_fft,
            hop_length=params.hop_length,
            n_mels=params.n_mels,
            power=2.0,
        )
        self.register_buffer("window", hann(params.n_fft))
        self.register_buffer("fb", two_sided_bands(params).float())

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if self.params.channels == "real":
            return torch.log(self.mel(wave) + LOG_FLOOR).unsqueeze(1)
        z = torch.complex(wave[:, 0].float(), wave[:, 1].float())
        spec = torch.stft(
            z,
            self.params.n_fft,
            self.params.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            onesided=False,
            return_complex=True,
        )
        power = torch.fft.fftshift(spec.abs().square(), dim=1)  # (B, n_fft, T)
        bands = torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)
        return torch.log(bands + LOG_FLOOR).unsqueeze(1)


class Normalize(nn.Module):
    """Pad with the log of silence up to MIN_SIDE in each dimension, then standardise per bin
    with statistics from the training split (padded rows: the statistics of all bins).

    `mean` and `std` (one value per band) are the only state, so statistics copied in later
    (from the training split or a checkpoint) take effect everywhere."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, frames: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().reshape(1, 1, -1, 1).float().clone())
        self.register_buffer("std", std.detach().reshape(1, 1, -1, 1).float().clone())
        # Fixed by the feature parameters, so the export traces a constant padding.
        self.rows = max(0, MIN_SIDE - mean.numel())
        self.pad = (0, max(0, MIN_SIDE - frames), 0, self.rows)

    def _row_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.rows:
            return self.mean, self.std
        overall = self.mean.mean()
        spread = ((self.std**2 + self.mean**2).mean() - overall**2).clamp_min(0).sqrt()
        fill = torch.ones(1, 1, self.rows, 1, device=self.mean.device)
        mean = torch.cat([self.mean, fill * overall], dim=2)
        std = torch.cat([self.std, fill * spread.clamp_min(1e-5)], dim=2)
        return mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = nn.functional.pad(x, self.pad, value=math.log(LOG_FLOOR))
        mean, std = self._row_stats()
        return (x - mean) / std


class FeatureExtractor(nn.Module):
    """LogMel followed by Normalize: what the model sees, in training and in export."""

    def __init__(self, params: FeatureParams, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.params = params
        self.logmel = LogMel(params)
        self.norm = Normalize(mean, std, params.frames)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.norm(self.logmel(wave))


@torch.no_grad()
def compute_stats(
    batches: Iterable[tuple[torch.Tensor, Any]],
    logmel: LogMel,
    device: torch.device,
    stop: StopSignal,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum, sum of squares and count of log-spectrogram values per band over `batches`, on
    `device` (sums, so data-parallel ranks can all-reduce them before `finish_stats`)."""
    total = torch.zeros(0, device=device, dtype=torch.float64)
    total_sq = torch.zeros(0, device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    for wave, _ in batches:
        if stop.is_set():
            raise TrainingCancelled("feature statistics")
        feats = logmel(wave.to(device, non_blocking=True)).double()  # (B, 1, M, T)
        per_bin = feats.sum(dim=(0, 1, 3))
        per_bin_sq = (feats * feats).sum(dim=(0, 1, 3))
        total = per_bin if total.numel() == 0 else total + per_bin
        total_sq = per_bin_sq if total_sq.numel() == 0 else total_sq + per_bin_sq
        count += feats.shape[0] * feats.shape[3]
    return total, total_sq, count


def finish_stats(
    total: torch.Tensor, total_sq: torch.Tensor, count: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (floored, so constant bins do not divide by zero)."""
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    return mean.float().cpu(), var.sqrt().clamp_min(1e-5).float().cpu()


def _dft_basis(n_fft: int, window: torch.Tensor, iq: bool) -> torch.Tensor:
    """Conv1d weights whose outputs are the real then the imaginary parts of the windowed DFT:
    one-sided bins for real input (1 channel), all bins in fftshift order for IQ (2 channels:
    Re X = Σ w (I cos + Q sin), Im X = Σ w (Q cos - I sin))."""
    n = torch.arange(n_fft, dtype=torch.float64)[None, :]
    if iq:
        k = ((torch.arange(n_fft) - n_fft // 2) % n_fft).double()[:, None]
    else:
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    angle = 2 * math.pi * k * n / n_fft
    cos, sin = torch.cos(angle) * window, torch.sin(angle) * window
    if not iq:
        return torch.cat([cos, -sin]).unsqueeze(1)  # (2 * bins, 1, n_fft)
    real = torch.stack([cos, sin], dim=1)
    imag = torch.stack([-sin, cos], dim=1)
    return torch.cat([real, imag])  # (2 * n_fft, 2, n_fft)


class ExportSpectrogram(nn.Module):
    """The same log spectrogram as `LogMel`, as real-valued ops the ONNX exporter supports:
    reflect padding (as `center=True`), a strided conv with the windowed DFT basis, power,
    band matmul."""

    basis: torch.Tensor
    fb: torch.Tensor

    def __init__(self, logmel: LogMel) -> None:
        super().__init__()
        params = logmel.params
        self.iq = params.channels == "iq"
        self.n_fft, self.hop = params.n_fft, params.hop_length
        window = logmel.window.detach().double().cpu()
        if window.numel() != self.n_fft:
            raise ValueError("window length must equal n_fft")
        basis = _dft_basis(self.n_fft, window, self.iq)
        self.bins = basis.shape[0] // 2
        self.register_buffer("basis", basis.float())
        fb = logmel.fb if self.iq else logmel.mel.mel_scale.fb
        self.register_buffer("fb", fb.detach().float().cpu().clone())

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        x = wave if self.iq else wave.unsqueeze(1)
        x = nn.functional.pad(x, (pad, pad), mode="reflect")
        spec = nn.functional.conv1d(x, self.basis, stride=self.hop)  # (B, 2 * bins, T)
        real, imag = spec[:, : self.bins], spec[:, self.bins :]
        power = real * real + imag * imag
        bands = torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)
        return torch.log(bands + LOG_FLOOR).unsqueeze(1)


ExportLogMel = ExportSpectrogram
"""The name earlier code imports."""


class FitLength(nn.Module):
    """Crop or zero-pad the last dimension to the training length, with static ops only (pad
    by the full length, then slice), so an exported graph takes any input length."""

    def __init__(self, num_samples: int) -> None:
        super().__init__()
        self.n = num_samples

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(wave[..., : self.n], (0, self.n))[..., : self.n]


class InferenceModel(nn.Module):
    """Waveform in, logits out: length fitting, features, normalisation and network."""

    def __init__(
        self, logmel: nn.Module, norm: Normalize, network: nn.Module, num_samples: int
    ) -> None:
        super().__init__()
        self.fit = FitLength(num_samples)
        self.logmel = logmel
        self.norm = norm
        self.network = network

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.network(self.norm(self.logmel(self.fit(wave))))
        return out

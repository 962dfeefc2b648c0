"""Log-mel features, computed on the training device and normalised with train-split statistics.

Training uses torchaudio's MelSpectrogram (an FFT). The ONNX exporter cannot express its
complex STFT, so the exported model computes the same spectrogram as a strided convolution
with a windowed DFT basis (`ExportLogMel`) that shares the window and mel filterbank; the
export check compares that model against the training one on real inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchaudio
from torch import nn

from services.worker.errors import TrainingCancelled
from services.worker.progress import StopSignal

LOG_FLOOR = 1e-6
"""Added before the log so silent (zero-padded) frames stay finite."""

MIN_SIDE = 32
"""ConvNeXt downsamples by 32 (stem 4, then 2 three times): a smaller spectrogram (short
recordings at a large hop, or few mel bins) would not reach the head."""


@dataclass(frozen=True, slots=True)
class FeatureParams:
    """Everything needed to rebuild the feature extractor; saved with every checkpoint."""

    sample_rate: int
    num_samples: int
    n_fft: int
    hop_length: int
    n_mels: int

    @property
    def frames(self) -> int:
        return 1 + self.num_samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LogMel(nn.Module):
    """Waveforms (batch, samples) → log-mel (batch, 1, n_mels, frames)."""

    def __init__(self, params: FeatureParams) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=params.sample_rate,
            n_fft=params.n_fft,
            hop_length=params.hop_length,
            n_mels=params.n_mels,
            power=2.0,
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(wave) + LOG_FLOOR).unsqueeze(1)


class Normalize(nn.Module):
    """Per-mel-bin standardisation with statistics from the training split, then padding with
    the mean (zeros after standardising) up to MIN_SIDE in each dimension."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, frames: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().reshape(1, 1, -1, 1).float().clone())
        self.register_buffer("std", std.detach().reshape(1, 1, -1, 1).float().clone())
        # Fixed by the feature parameters, so the export traces a constant padding.
        self.pad = (0, max(0, MIN_SIDE - frames), 0, max(0, MIN_SIDE - mean.numel()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if any(self.pad):
            x = nn.functional.pad(x, self.pad)
        return x


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
    """Sum, sum of squares and count of log-mel values per mel bin over `batches`, on `device`
    (sums, so data-parallel ranks can all-reduce them before `finish_stats`)."""
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


class ExportLogMel(nn.Module):
    """The same log-mel as `LogMel`, as real-valued ops the ONNX exporter supports: reflect
    padding (as `center=True`), a strided conv with the windowed DFT basis, power, mel matmul."""

    basis: torch.Tensor
    fb: torch.Tensor

    def __init__(self, logmel: LogMel) -> None:
        super().__init__()
        spec = logmel.mel.spectrogram
        n_fft = int(spec.n_fft)
        self.n_fft = n_fft
        self.hop = int(spec.hop_length)
        window = spec.window.detach().double().cpu()
        if window.numel() != n_fft:
            raise ValueError("window length must equal n_fft")
        bins = n_fft // 2 + 1
        k = torch.arange(bins, dtype=torch.float64)[:, None]
        n = torch.arange(n_fft, dtype=torch.float64)[None, :]
        angle = 2 * math.pi * k * n / n_fft
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
        self.register_buffer("basis", basis.float().unsqueeze(1))  # (2 * bins, 1, n_fft)
        self.register_buffer("fb", logmel.mel.mel_scale.fb.detach().float().cpu().clone())
        self.bins = bins

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        x = nn.functional.pad(wave.unsqueeze(1), (pad, pad), mode="reflect")
        spec = nn.functional.conv1d(x, self.basis, stride=self.hop)  # (B, 2 * bins, T)
        real, imag = spec[:, : self.bins], spec[:, self.bins :]
        power = real * real + imag * imag
        mel = torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)
        return torch.log(mel + LOG_FLOOR).unsqueeze(1)


class InferenceModel(nn.Module):
    """Waveform in, logits out: features, normalisation and network in one module."""

    def __init__(self, logmel: nn.Module, norm: Normalize, network: nn.Module) -> None:
        super().__init__()
        self.logmel = logmel
        self.norm = norm
        self.network = network

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.network(self.norm(self.logmel(wave)))
        return out

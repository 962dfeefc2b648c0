"""Recordings the import and feature tests write themselves: WAV in every format (soundfile),
SigMF pairs, hand-made hostile headers, and complex tones as IQ."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from shared.wavio import write_wav


def raw_wav(
    path: Path,
    *,
    channels: int = 1,
    rate: int = 8000,
    frames: int = 100,
    bits: int = 16,
    cut: int = 0,
) -> Path:
    """A PCM WAV written byte by byte, so that its header may lie (a rate of 0 or 2**32 - 1,
    65535 channels) and its data may be `cut` bytes short of what the header declares."""
    width = bits // 8
    data = bytes(frames * channels * width)
    block = channels * width
    fmt = struct.pack(
        "<HHIIHH", 1, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits
    )
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data[: len(data) - cut]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def complex_tone(
    freq_hz: float, rate: int, n: int, rng: np.random.Generator, snr_db: float = 20.0
) -> np.ndarray:
    """`exp(j 2 pi f t)` with a random phase and complex white noise at `snr_db`."""
    t = np.arange(n) / rate
    tone = np.exp(1j * (2 * np.pi * freq_hz * t + rng.uniform(0, 2 * np.pi)))
    sigma = np.sqrt(10 ** (-snr_db / 10) / 2)
    noise = rng.normal(0, sigma, n) + 1j * rng.normal(0, sigma, n)
    return 0.5 * (tone + noise)


def write_iq_wav(path: Path, signal: np.ndarray, rate: int, subtype: str = "FLOAT") -> Path:
    """A complex signal as a two-channel WAV (I, Q), float32 by default."""
    write_wav(path, np.stack([signal.real, signal.imag], axis=1), rate, subtype=subtype)
    return path

"""WAV files in and out with the standard library (16-bit PCM, mono or two-channel IQ).

torchaudio's own I/O moved to torchcodec; for plain PCM WAV the stdlib is enough and adds
nothing to install.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


class SignalFileError(ValueError):
    """A signal file that cannot be read as 16-bit PCM WAV."""


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write float samples in [-1, 1], shape (n,) or (n, channels), as 16-bit PCM."""
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    pcm = (np.clip(data, -1.0, 1.0) * 32767.0).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(pcm.shape[1])
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Read a WAV as float32 of shape (channels, n) and its sample rate."""
    try:
        with wave.open(str(path), "rb") as src:
            channels, width, rate = src.getnchannels(), src.getsampwidth(), src.getframerate()
            frames = src.readframes(src.getnframes())
    except (wave.Error, EOFError) as exc:
        raise SignalFileError(f"{path}: not a PCM WAV file ({exc})") from None
    if width != 2:
        raise SignalFileError(f"{path}: {8 * width}-bit samples; only 16-bit PCM is supported")
    pcm = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).T
    return (pcm.astype(np.float32) / 32768.0), rate

"""WAV files in and out through libsndfile (`soundfile`): every PCM width (8/16/24/32-bit),
float32/64 and WAVE_FORMAT_EXTENSIBLE, the formats SDR software writes IQ recordings in.

The stdlib `wave` module rejects extensible headers and float samples; libsndfile ships inside
the soundfile wheel, so nothing else needs installing. One channel is a real signal, two are
I and Q of a complex one (see `shared/signals.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

from shared.signal_info import SignalFileError, SignalInfo, check_info

BLOCK_FRAMES = 1 << 18
"""Frames decoded at a time when a whole file is verified, so memory stays bounded."""


def write_wav(path: Path, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write float samples in [-1, 1], shape (n,) or (n, channels); 16-bit PCM by default,
    any libsndfile WAV subtype on request (`FLOAT`, `PCM_24`, ...)."""
    data = np.asarray(samples, dtype=np.float64)
    if subtype.startswith("PCM"):
        data = np.clip(data, -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, int(sample_rate), subtype=subtype, format="WAV")


def _open_error(exc: Exception) -> SignalFileError:
    reason = str(exc).split(": ", 1)[-1] if ": " in str(exc) else str(exc)
    return SignalFileError(f"not a readable WAV file ({reason.strip() or type(exc).__name__})")


def info_wav(path: Path) -> SignalInfo:
    """Rate, channels and frame count from the header, without decoding the samples."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        reason = _header_reason(path) if path.is_file() else None
        raise (SignalFileError(reason) if reason else _open_error(exc)) from None
    if info.format != "WAV" and info.format != "WAVEX":
        raise SignalFileError(f"not a WAV file (libsndfile reads it as {info.format})")
    return SignalInfo(sample_rate=int(info.samplerate), channels=info.channels, frames=info.frames)


def read_wav(path: Path, max_frames: int | None = None) -> tuple[np.ndarray, int]:
    """Float32 samples of shape (channels, n) and the sample rate; at most `max_frames` frames
    from the start are decoded (training needs only its crop of a long recording)."""
    try:
        with sf.SoundFile(str(path)) as src:
            frames = src.frames if max_frames is None else min(src.frames, max_frames)
            data = src.read(frames, dtype="float32", always_2d=True)
            rate = int(src.samplerate)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise _open_error(exc) from None
    return np.ascontiguousarray(data.T), rate


def _chunks(path: Path) -> Iterator[tuple[bytes, int, int, bytes]]:
    """(id, offset, declared length, first 16 bytes) of each top-level RIFF chunk."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return
        order: Literal["little", "big"] = "little" if head[:4] == b"RIFF" else "big"
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk = fh.read(24)
            length = int.from_bytes(chunk[4:8], order)
            yield chunk[:4], pos, length, chunk[8:]
            pos += 8 + length + (length & 1)


def _header_reason(path: Path) -> str | None:
    """Why a header libsndfile refused is wrong, in the import's terms, when the `fmt ` chunk
    says (a sample rate of 0 or 2**32 - 1, thousands of channels): libsndfile's own message
    for those is an internal one."""
    for name, _, _, start in _chunks(path):
        if name == b"fmt " and len(start) >= 8:
            channels = int.from_bytes(start[2:4], "little")
            rate = int.from_bytes(start[4:8], "little")
            try:
                check_info(SignalInfo(sample_rate=rate, channels=channels, frames=1))
            except SignalFileError as exc:
                return str(exc)
    return None


def _data_shortfall(path: Path) -> int:
    """Bytes the RIFF `data` chunk declares beyond the end of the file. libsndfile quietly
    reads what is there, so a cut-off download would pass as a shorter recording; 0 (or
    0xFFFFFFFF) is how streaming writers mark an unknown size, and is not held against them."""
    size = path.stat().st_size
    for name, pos, length, _ in _chunks(path):
        if name == b"data":
            return 0 if length in (0, 0xFFFFFFFF) else max(0, pos + 8 + length - size)
    return 0


def verify_wav(path: Path) -> None:
    """Decode every frame, block by block, so a truncated or corrupt body is found at import
    rather than in the middle of a training job; non-finite samples are refused too."""
    try:
        with sf.SoundFile(str(path)) as src:
            declared, seen = src.frames, 0
            for block in src.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    raise SignalFileError(f"non-finite sample values near frame {seen}")
                seen += block.shape[0]
    except SignalFileError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise _open_error(exc) from None
    if seen < declared:
        raise SignalFileError(f"truncated: the header declares {declared} frames, {seen} read")
    missing = _data_shortfall(path)
    if missing:
        raise SignalFileError(f"truncated: the data chunk is {missing} bytes short of its header")

"""Signal files of every supported kind behind one interface: WAV (`wavio`) and SigMF
(`sigmfio`, a recording is named by its `.sigmf-meta`). Samples are float32 of shape
(channels, n): one row for a real signal, I and Q for a complex one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from shared import sigmfio, wavio
from shared.signal_info import SignalFileError, SignalInfo, check_info

__all__ = [
    "SignalFileError",
    "SignalInfo",
    "content_digest",
    "inspect_signal",
    "is_signal_file",
    "read_signal",
    "verify_signal",
]


def _is_sigmf(path: Path) -> bool:
    return path.name.lower().endswith(sigmfio.META_SUFFIX)


def is_signal_file(path: Path) -> bool:
    """A file that names a recording: `*.wav` or `*.sigmf-meta` (any case)."""
    return path.suffix.lower() == ".wav" or _is_sigmf(path)


def inspect_signal(path: Path) -> SignalInfo:
    """Rate, channels and frames from the file's header, checked against the import limits."""
    info = sigmfio.info_sigmf(path) if _is_sigmf(path) else wavio.info_wav(path)
    check_info(info)
    return info


def verify_signal(path: Path) -> SignalInfo:
    """`inspect_signal`, then every sample decoded (bounded memory): what an import accepts."""
    info = inspect_signal(path)
    if _is_sigmf(path):
        sigmfio.verify_sigmf(path)
    else:
        wavio.verify_wav(path)
    return info


def read_signal(path: Path, max_frames: int | None = None) -> tuple[np.ndarray, int]:
    """Samples (channels, n) and the rate; at most `max_frames` frames from the start."""
    if _is_sigmf(path):
        return sigmfio.read_sigmf(path, max_frames)
    return wavio.read_wav(path, max_frames)


def content_digest(path: Path) -> str:
    """SHA-256 of the recording's bytes (for SigMF, metadata then data), read in chunks: the
    basis of content-derived recording ids."""
    digest = hashlib.sha256()
    files = [path, sigmfio.read_meta(path).data_path] if _is_sigmf(path) else [path]
    for file in files:
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()

"""Uploaded recordings → the ONNX model's input, in numpy (the API never imports torch).

A prediction request's files are written to a scratch folder under their own (base) names, so
that a SigMF pair (`x.sigmf-meta` + `x.sigmf-data`) is read exactly as the import reads it
(`shared/signals.py`); each recording is then shaped as training shaped it: resampled to the
model's rate (in the frequency domain, like `services/worker/bounds.resample`), cropped to its
start or zero-padded to the model's length, real as `[samples]`, IQ as `[2, samples]` (a real
recording enters an IQ model as `I + j0`).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shared import sigmfio
from shared.errors import InvalidInput
from shared.signal_info import SignalFileError
from shared.signals import inspect_signal, is_signal_file, read_signal

Floats = npt.NDArray[np.float32]

MAX_FILE_NAME = 255

MAX_READ_FRAMES = 1 << 24
"""The most frames read from one file before resampling, as training reads them."""


@dataclass(frozen=True, slots=True)
class ModelInput:
    """What the exported model takes, from its `metadata_props` (see onnx_export.metadata)."""

    classes: list[str]
    sample_rate: int
    num_samples: int
    channels: str
    """`real` or `iq`."""

    @classmethod
    def of(cls, props: dict[str, str]) -> ModelInput:
        return cls(
            classes=list(json.loads(props["classes"])),
            sample_rate=int(props["sample_rate"]),
            num_samples=int(props["num_samples"]),
            channels=props.get("channels", "real"),
        )


def resample(wave: npt.NDArray[np.complex128] | Floats, orig: int, new: int) -> npt.NDArray:
    """The last axis from `orig` to `new` Hz in the frequency domain, real or complex."""
    if orig == new or wave.shape[-1] == 0:
        return wave
    length = wave.shape[-1]
    out = max(1, round(length * new / orig))
    scale = out / length
    if not np.iscomplexobj(wave):
        spec = np.fft.rfft(wave.astype(np.float64))
        keep = min(spec.shape[-1], out // 2 + 1)
        return np.fft.irfft(spec[..., :keep], n=out) * scale
    spec = np.fft.fft(wave.astype(np.complex128))
    short = min(length, out)
    half = short // 2
    body = np.zeros((*spec.shape[:-1], out), dtype=np.complex128)
    body[..., :half] = spec[..., :half]
    body[..., out - (short - half) :] = spec[..., length - (short - half) :]
    return np.fft.ifft(body) * scale


def fit_length(wave: npt.NDArray, n: int) -> npt.NDArray:
    have = wave.shape[-1]
    if have >= n:
        return wave[..., :n]
    pad = [(0, 0)] * (wave.ndim - 1) + [(0, n - have)]
    return np.pad(wave, pad)


def shape_for(samples: Floats, rate: int, model: ModelInput, name: str) -> Floats:
    """One recording's samples (channels, n) at `rate` as the model's input row."""
    if model.channels == "iq":
        q = samples[1] if samples.shape[0] > 1 else np.zeros_like(samples[0])
        iq = samples[0] + 1j * q.astype(np.float64)
        wave = fit_length(resample(iq, rate, model.sample_rate), model.num_samples)
        return np.stack([wave.real, wave.imag]).astype(np.float32)
    if samples.shape[0] > 1:
        raise InvalidInput(
            f"files: {name!r} is an IQ recording (two channels); this job's model takes real"
            " (one-channel) recordings",
            "files",
        )
    wave = fit_length(resample(samples[0], rate, model.sample_rate), model.num_samples)
    return np.asarray(wave, dtype=np.float32)


def _safe_name(name: str | None, index: int) -> str:
    base = Path((name or "").replace("\\", "/")).name
    if not base or base in (".", "..") or len(base) > MAX_FILE_NAME or "\0" in base:
        raise InvalidInput(f"files: part {index + 1} has no usable file name", "files")
    return base


def recordings_of(names: Sequence[str]) -> list[str]:
    """The names that are recordings (a WAV, or a SigMF pair named by its meta); a lone
    `.sigmf-data` or any other file is a 400 naming it."""
    lowered = {n.lower() for n in names}
    out = []
    for name in names:
        low = name.lower()
        if low.endswith(sigmfio.DATA_SUFFIX):
            meta = low[: -len(sigmfio.DATA_SUFFIX)] + sigmfio.META_SUFFIX
            if meta not in lowered:
                raise InvalidInput(
                    f"files: {name!r} is SigMF data without its {sigmfio.META_SUFFIX} part",
                    "files",
                )
            continue
        if not is_signal_file(Path(name)):
            raise InvalidInput(
                f"files: {name!r} is not a recording (WAV, or a SigMF .sigmf-meta with its"
                " .sigmf-data)",
                "files",
            )
        out.append(name)
    return out


def read_uploads(
    parts: Sequence[tuple[str | None, bytes]], model: ModelInput
) -> tuple[list[str], Floats]:
    """The recordings among the uploaded `parts` (file name, content) and the model's input
    batch, in upload order; a file that is not a readable recording is a 400 naming it."""
    names = [_safe_name(name, i) for i, (name, _) in enumerate(parts)]
    if len({n.lower() for n in names}) != len(names):
        raise InvalidInput("files: two parts have the same file name", "files")
    with tempfile.TemporaryDirectory(prefix="heimdall-predict-") as tmp:
        root = Path(tmp)
        for name, (_, content) in zip(names, parts, strict=True):
            (root / name).write_bytes(content)
        recordings = recordings_of(names)
        rows = []
        for name in recordings:
            try:
                info = inspect_signal(root / name)
                need = math.ceil(model.num_samples * info.sample_rate / model.sample_rate) + 1
                need = min(need, MAX_READ_FRAMES)
                samples, rate = read_signal(root / name, need)
            except SignalFileError as exc:
                raise InvalidInput(f"files: {name!r}: {exc}", "files") from None
            rows.append(shape_for(samples, rate, model, name))
    if not rows:
        raise InvalidInput("files: no recording among the uploaded parts", "files")
    return recordings, np.stack(rows)

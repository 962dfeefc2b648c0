"""SigMF recordings: a `.sigmf-meta` JSON file beside its `.sigmf-data` binary.

Read here rather than with the `sigmf` package: that package pulls in jsonschema (and its Rust
`rpds` dependency) and, on hostile files, accepts what an import must refuse (a truncated data
file only warns, a sample rate of 0 passes, an empty data file fails inside `mmap`). The part of
the format a classifier needs is small: the datatype, `core:sample_rate`, the first capture's
`core:header_bytes`, and an SNR that annotations may carry.

Datatypes: `c` (complex, stored as I, Q pairs) or `r` (real), then `f32`, `f64`, `i32`, `i16`,
`i8`, `u32`, `u16` or `u8`, then `_le` or `_be` (none for 8-bit types). Integers are scaled to
[-1, 1). A complex recording reads as two channels, I and Q.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.signal_info import SignalFileError, SignalInfo

META_SUFFIX = ".sigmf-meta"
DATA_SUFFIX = ".sigmf-data"
MAX_META_BYTES = 16 * 1024 * 1024
"""A metadata file larger than this is refused before it is parsed."""

_DATATYPE = re.compile(
    r"^(?P<kind>[cr])(?P<base>f32|f64|i32|i16|u32|u16|i8|u8)(?P<endian>_le|_be)?$"
)


@dataclass(frozen=True, slots=True)
class SigmfMeta:
    """What `.sigmf-meta` says about its data file."""

    data_path: Path
    dtype: np.dtype[Any]
    complex: bool
    sample_rate: int
    header_bytes: int
    snr_db: float | None

    @property
    def frame_bytes(self) -> int:
        return self.dtype.itemsize * (2 if self.complex else 1)


def _dtype(datatype: Any) -> tuple[np.dtype[Any], bool]:
    match = _DATATYPE.match(datatype) if isinstance(datatype, str) else None
    if match is None:
        raise SignalFileError(f"core:datatype {datatype!r} is not a SigMF datatype (e.g. cf32_le)")
    base, endian = match["base"], match["endian"]
    if base in ("i8", "u8"):
        if endian:
            raise SignalFileError(f"core:datatype {datatype!r}: 8-bit types have no endianness")
    elif not endian:
        raise SignalFileError(f"core:datatype {datatype!r} needs _le or _be")
    order = ">" if endian == "_be" else "<"
    return np.dtype(f"{order}{base[0]}{int(base[1:]) // 8}"), match["kind"] == "c"


def _snr(meta: dict[str, Any]) -> float | None:
    """An SNR in dB from any `<namespace>:snr_db` or `<namespace>:snr` key, globally or on the
    first annotation that has one (SigMF core has no SNR field)."""
    annotations = meta.get("annotations") or []
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise SignalFileError("'annotations' is not a list of objects")
    for source in [meta["global"], *annotations]:
        for key, value in source.items():
            if key.endswith((":snr_db", ":snr")):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise SignalFileError(f"{key} {value!r} is not a number")
                if not math.isfinite(value):
                    raise SignalFileError(f"{key} {value!r} is not finite")
                return float(value)
    return None


def _header_bytes(captures: Any) -> int:
    if not isinstance(captures, list) or not all(isinstance(c, dict) for c in captures):
        raise SignalFileError("'captures' is not a list of objects")
    header = captures[0].get("core:header_bytes", 0) if captures else 0
    if isinstance(header, bool) or not isinstance(header, int) or header < 0:
        raise SignalFileError(f"core:header_bytes {header!r} is not a byte count")
    if any(c.get("core:header_bytes", 0) for c in captures[1:]):
        raise SignalFileError("header bytes after the first capture are not supported")
    return header


def _data_path(meta_path: Path, glob: dict[str, Any]) -> Path:
    if "core:dataset" not in glob:
        return data_path_for(meta_path)
    name = glob["core:dataset"]
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise SignalFileError(f"core:dataset {name!r} must be a file name beside the meta")
    return meta_path.with_name(name)


def _load_json(meta_path: Path) -> Any:
    try:
        if meta_path.stat().st_size > MAX_META_BYTES:
            raise SignalFileError(f"metadata larger than {MAX_META_BYTES // 2**20} MiB")
        return json.loads(meta_path.read_bytes())
    except SignalFileError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SignalFileError(f"metadata is not readable JSON ({type(exc).__name__})") from None


def data_path_for(meta_path: Path) -> Path:
    return meta_path.with_name(meta_path.name[: -len(META_SUFFIX)] + DATA_SUFFIX)


def read_meta(meta_path: Path) -> SigmfMeta:
    """Parse and check `.sigmf-meta`; raises SignalFileError saying what is wrong."""
    meta = _load_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("global"), dict):
        raise SignalFileError("metadata has no 'global' object")
    glob = meta["global"]
    dtype, is_complex = _dtype(glob.get("core:datatype"))
    rate = glob.get("core:sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
        raise SignalFileError(f"core:sample_rate {rate!r} is not a number")
    if rate != round(rate):
        raise SignalFileError(f"core:sample_rate {rate!r} is not a whole number of Hz")
    channels = glob.get("core:num_channels", 1)
    if channels != 1:
        raise SignalFileError(f"core:num_channels {channels!r}; only one channel is supported")
    captures = meta.get("captures")
    header = _header_bytes([] if captures is None else captures)
    data = _data_path(meta_path, glob)
    return SigmfMeta(data, dtype, is_complex, int(rate), header, _snr(meta))


def _frames(meta: SigmfMeta) -> int:
    try:
        size = meta.data_path.stat().st_size
    except OSError:
        raise SignalFileError(f"data file {meta.data_path.name} is missing") from None
    body = size - meta.header_bytes
    if body < 0:
        raise SignalFileError(f"data file shorter than its {meta.header_bytes} header bytes")
    if body % meta.frame_bytes:
        raise SignalFileError(
            f"truncated: {body % meta.frame_bytes} trailing bytes of {meta.data_path.name} are"
            f" not a whole sample of {meta.frame_bytes} bytes"
        )
    return body // meta.frame_bytes


def info_sigmf(meta_path: Path) -> SignalInfo:
    meta = read_meta(meta_path)
    return SignalInfo(meta.sample_rate, 2 if meta.complex else 1, _frames(meta))


def _scale(raw: np.ndarray) -> np.ndarray:
    kind, bits = raw.dtype.kind, raw.dtype.itemsize * 8
    if kind == "f":
        return raw.astype(np.float32)
    if kind == "u":
        half = float(2 ** (bits - 1))
        return ((raw.astype(np.float64) - half) / half).astype(np.float32)
    return (raw.astype(np.float64) / float(2 ** (bits - 1))).astype(np.float32)


def read_sigmf(meta_path: Path, max_frames: int | None = None) -> tuple[np.ndarray, int]:
    """Float32 samples of shape (channels, n): one row for real data, I and Q for complex;
    at most `max_frames` frames from the start are read."""
    meta = read_meta(meta_path)
    frames = _frames(meta)
    count = frames if max_frames is None else min(frames, max_frames)
    per_frame = 2 if meta.complex else 1
    try:
        raw = np.fromfile(
            meta.data_path, dtype=meta.dtype, count=count * per_frame, offset=meta.header_bytes
        )
    except (OSError, ValueError) as exc:
        raise SignalFileError(f"data file not readable ({exc})") from None
    return np.ascontiguousarray(_scale(raw).reshape(-1, per_frame).T), meta.sample_rate


def verify_sigmf(meta_path: Path, block_frames: int = 1 << 18) -> None:
    """Read every sample, block by block, and refuse non-finite values."""
    meta = read_meta(meta_path)
    frames = _frames(meta)
    per_frame = 2 if meta.complex else 1
    with meta.data_path.open("rb") as fh:
        fh.seek(meta.header_bytes)
        for start in range(0, frames, block_frames):
            n = min(block_frames, frames - start) * per_frame
            raw = np.frombuffer(fh.read(n * meta.dtype.itemsize), dtype=meta.dtype)
            if raw.size != n:
                raise SignalFileError(f"truncated near frame {start}")
            if raw.dtype.kind == "f" and not np.isfinite(raw).all():
                raise SignalFileError(f"non-finite sample values near frame {start}")


def write_sigmf(
    meta_path: Path,
    samples: np.ndarray,
    sample_rate: int,
    datatype: str = "cf32_le",
    annotations: list[dict[str, Any]] | None = None,
) -> None:
    """Write a SigMF pair: complex samples (n,) for `c` datatypes, real (n,) for `r` ones.
    For tests, benchmarks and tools that make recordings."""
    dtype, is_complex = _dtype(datatype)
    data = np.asarray(samples)
    parts = np.stack([data.real, data.imag], axis=-1).reshape(-1) if is_complex else data.real
    if dtype.kind in "iu":
        bits = dtype.itemsize * 8
        full = float(2 ** (bits - 1))
        scaled = np.clip(np.round(parts * full), -full, full - 1)
        parts = scaled + full if dtype.kind == "u" else scaled
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    data_path_for(meta_path).write_bytes(parts.astype(dtype).tobytes())
    meta = {
        "global": {
            "core:datatype": datatype,
            "core:sample_rate": sample_rate,
            "core:version": "1.0.0",
        },
        "captures": [{"core:sample_start": 0}],
        "annotations": annotations or [],
    }
    meta_path.write_text(json.dumps(meta, indent=1))

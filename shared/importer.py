"""`heimdall data import`: every file of a recordings folder checked before anything is written.

Layout: `DIR/<class>/<recording>` where a recording is a `.wav` file or a SigMF pair
(`x.sigmf-meta` + `x.sigmf-data`), with an optional `DIR/manifest.csv` (`file,label,snr_db,
approved`) whose `file` is the path under DIR (or the bare file name) and overrides the label
and fills SNR and approval. A SigMF annotation may give the SNR too; the manifest wins.

The scan returns the good recordings and, for every bad file or manifest row, its name and
reason; the caller decides between all-or-nothing (the default) and `--skip-bad`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from shared.dataset_names import check_dataset_name
from shared.datasets import Recording, recording_id
from shared.sigmfio import DATA_SUFFIX, META_SUFFIX, read_meta
from shared.signals import SignalFileError, content_digest, is_signal_file, verify_signal

MANIFEST = "manifest.csv"
MAX_LABEL = 100
"""The labels column's width."""
MAX_PATH = 1024
"""The paths column's width: a recording is stored by its absolute path."""

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


@dataclass(frozen=True, slots=True)
class BadFile:
    name: str
    """The file (or `manifest.csv:LINE`) relative to the imported folder."""
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass
class ImportScan:
    recordings: list[Recording] = field(default_factory=list)
    bad: list[BadFile] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ManifestRow:
    label: str | None
    snr_db: float | None
    approved: bool | None


def _parse_row(row: dict[str, str | None]) -> ManifestRow:
    label = (row.get("label") or "").strip() or None
    if label is not None and (len(label) > MAX_LABEL or "\0" in label):
        raise ValueError(f"label must be 1-{MAX_LABEL} characters without NUL")
    snr_raw = (row.get("snr_db") or "").strip()
    snr: float | None = None
    if snr_raw:
        try:
            snr = float(snr_raw)
        except ValueError:
            raise ValueError(f"snr_db {snr_raw!r} is not a number") from None
        if not math.isfinite(snr):
            raise ValueError(f"snr_db {snr_raw!r} is not finite")
    approved_raw = (row.get("approved") or "").strip().lower()
    approved: bool | None = None
    if approved_raw:
        if approved_raw not in _TRUE | _FALSE:
            raise ValueError(f"approved {approved_raw!r} is not true/false")
        approved = approved_raw in _TRUE
    return ManifestRow(label, snr, approved)


def read_manifest(path: Path, bad: list[BadFile]) -> dict[str, ManifestRow]:
    """Rows by their `file` value; every row that does not parse goes to `bad`."""
    rows: dict[str, ManifestRow] = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "file" not in reader.fieldnames:
                bad.append(BadFile(MANIFEST, "needs a header row with a 'file' column"))
                return rows
            for row in reader:
                where = f"{MANIFEST}:{reader.line_num}"
                name = (row.get("file") or "").strip()
                if not name:
                    bad.append(BadFile(where, "empty 'file'"))
                    continue
                if None in row:
                    bad.append(BadFile(where, "more fields than the header"))
                    continue
                try:
                    rows[name] = _parse_row(row)
                except ValueError as exc:
                    bad.append(BadFile(where, f"{name}: {exc}"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        bad.append(BadFile(MANIFEST, f"not readable as UTF-8 CSV ({exc})"))
    return rows


def _manifest_keys(rel: str) -> list[str]:
    """The spellings a manifest may use for a recording: its path under the folder or its bare
    name; for SigMF also the data file's or the pair's base name."""
    keys = [rel, Path(rel).name]
    if rel.lower().endswith(META_SUFFIX):
        base = rel[: -len(META_SUFFIX)]
        keys += [base, base + DATA_SUFFIX, Path(base).name, Path(base).name + DATA_SUFFIX]
    return keys


def _candidates(root: Path, bad: list[BadFile]) -> list[Path]:
    """Signal files in class folders; stray SigMF data files without metadata are bad."""
    found = []
    for path in sorted(p for p in root.glob("*/*") if p.is_file()):
        rel = str(path.relative_to(root))
        if is_signal_file(path):
            found.append(path)
        elif path.name.lower().endswith(DATA_SUFFIX):
            meta = path.with_name(path.name[: -len(DATA_SUFFIX)] + META_SUFFIX)
            if not meta.exists():
                bad.append(BadFile(rel, f"SigMF data without its {meta.name}"))
    return found


def _recording(dataset: str, root: Path, path: Path, meta: ManifestRow | None) -> Recording:
    rel = str(path.relative_to(root))
    stored = str(path.resolve())
    if len(stored) > MAX_PATH:
        raise SignalFileError(f"its absolute path is longer than {MAX_PATH} characters")
    info = verify_signal(path)
    label = (meta.label if meta else None) or path.parent.name
    if len(label) > MAX_LABEL or "\0" in label:
        raise SignalFileError(f"class name must be 1-{MAX_LABEL} characters without NUL")
    snr = meta.snr_db if meta and meta.snr_db is not None else None
    if snr is None and path.name.lower().endswith(META_SUFFIX):
        snr = read_meta(path).snr_db
    approved = meta.approved if meta and meta.approved is not None else True
    digest = content_digest(path)
    return Recording(
        id=recording_id(dataset, rel, digest),
        path=stored,
        label=label,
        snr_db=snr,
        approved=approved,
        sample_rate=info.sample_rate,
        duration_s=info.duration_s,
        channels=info.channels,
        sha256=digest,
    )


def scan_import_dir(root: Path, dataset: str) -> ImportScan:
    """Check every recording under `root` (and the manifest) for dataset `dataset`. Raises
    ValueError only for what is wrong with the request itself (name, folder, no files)."""
    check_dataset_name(dataset)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    scan = ImportScan()
    manifest_path = root / MANIFEST
    manifest = read_manifest(manifest_path, scan.bad) if manifest_path.exists() else {}
    candidates = _candidates(root, scan.bad)
    if not candidates and not scan.bad:
        raise ValueError(
            f"{root}: no recordings found in class sub-folders"
            " (<class>/<file>.wav or <class>/<name>.sigmf-meta)"
        )
    used: set[str] = set()
    for path in candidates:
        rel = str(path.relative_to(root))
        key = next((k for k in _manifest_keys(rel) if k in manifest), None)
        if key is not None:
            used.add(key)
        try:
            scan.recordings.append(_recording(dataset, root, path, manifest.get(key or "")))
        except SignalFileError as exc:
            scan.bad.append(BadFile(rel, str(exc)))
        except OSError as exc:
            scan.bad.append(BadFile(rel, f"not readable ({exc.strerror or exc})"))
    for name in sorted(set(manifest) - used):
        scan.bad.append(BadFile(f"{MANIFEST}: {name}", "no such recording in a class folder"))
    return scan

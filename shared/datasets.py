"""Datasets and recordings in PostgreSQL; signal files under `<data dir>/datasets/<name>/`."""

from __future__ import annotations

import csv
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from shared.synth import synth_dataset
from shared.wavio import SignalFileError, read_wav, write_wav


@dataclass(frozen=True, slots=True)
class Recording:
    id: str
    path: str
    label: str
    snr_db: float | None
    approved: bool
    sample_rate: int
    duration_s: float
    channels: int


async def ensure_dataset(conn: asyncpg.Connection, name: str, description: str = "") -> None:
    await conn.execute(
        "INSERT INTO datasets (name, description) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        name,
        description,
    )


async def add_recordings(conn: asyncpg.Connection, dataset: str, rows: list[Recording]) -> int:
    """Insert recordings in one COPY; returns how many were added."""
    await conn.copy_records_to_table(
        "recordings",
        columns=[
            "id",
            "dataset",
            "path",
            "label",
            "snr_db",
            "approved",
            "sample_rate",
            "duration_s",
            "channels",
        ],
        records=[
            (
                uuid.UUID(r.id),
                dataset,
                r.path,
                r.label,
                r.snr_db,
                r.approved,
                r.sample_rate,
                r.duration_s,
                r.channels,
            )
            for r in rows
        ],
    )
    return len(rows)


async def write_synthetic(
    conn: asyncpg.Connection,
    datasets_dir: Path,
    name: str,
    samples: int,
    *,
    seed: int = 0,
    duration_s: float = 0.5,
    sample_rate: int = 8000,
) -> int:
    """Generate `samples` synthetic recordings: WAV files on disk plus their rows."""
    await ensure_dataset(conn, name, "synthetic RF recordings")
    rows = []
    for rec in synth_dataset(samples, seed=seed, duration_s=duration_s, sample_rate=sample_rate):
        rid = str(uuid.uuid4())
        path = datasets_dir / name / rec.label / f"{rid}.wav"
        write_wav(path, rec.samples, rec.sample_rate)
        rows.append(
            Recording(
                id=rid,
                path=str(path.resolve()),
                label=rec.label,
                snr_db=rec.snr_db,
                approved=rec.approved,
                sample_rate=rec.sample_rate,
                duration_s=rec.samples.size / rec.sample_rate,
                channels=1,
            )
        )
    return await add_recordings(conn, name, rows)


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "y", "t"}


def scan_import_dir(root: Path) -> list[Recording]:
    """Recordings from `root/<class>/*.wav`, with `root/manifest.csv` (file, label, snr_db,
    approved) overriding labels and filling SNR and approval. Raises ValueError with the file
    name for anything unreadable."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    manifest: dict[str, dict[str, str]] = {}
    manifest_path = root / "manifest.csv"
    if manifest_path.exists():
        with manifest_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if "file" not in row:
                    raise ValueError(f"{manifest_path}: needs a 'file' column")
                manifest[row["file"]] = row
    rows = []
    for path in sorted(root.glob("*/*.wav")):
        rel = str(path.relative_to(root))
        meta = manifest.get(rel) or manifest.get(path.name) or {}
        try:
            samples, rate = read_wav(path)
        except SignalFileError as exc:
            raise ValueError(str(exc)) from None
        snr = meta.get("snr_db")
        rows.append(
            Recording(
                id=str(uuid.uuid4()),
                path=str(path.resolve()),
                label=meta.get("label") or path.parent.name,
                snr_db=float(snr) if snr not in (None, "") else None,
                approved=_truthy(meta["approved"]) if meta.get("approved") else True,
                sample_rate=rate,
                duration_s=samples.shape[1] / rate,
                channels=samples.shape[0],
            )
        )
    if not rows:
        raise ValueError(f"{root}: no WAV files found in class sub-folders (<class>/<file>.wav)")
    return rows


async def summarize(conn: asyncpg.Connection, name: str) -> dict[str, Any] | None:
    """Counts per class, approved count and SNR range of one dataset; None if it does not exist."""
    ds = await conn.fetchrow(
        "SELECT name, description, created_at FROM datasets WHERE name=$1", name
    )
    if ds is None:
        return None
    stats = await conn.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE approved) AS approved,"
        " min(snr_db) AS snr_min, max(snr_db) AS snr_max,"
        " coalesce(sum(duration_s), 0) AS seconds FROM recordings WHERE dataset=$1",
        name,
    )
    classes = await conn.fetch(
        "SELECT label, count(*) AS n FROM recordings WHERE dataset=$1"
        " GROUP BY label ORDER BY label",
        name,
    )
    return {
        "name": ds["name"],
        "description": ds["description"],
        "recordings": stats["n"],
        "approved": stats["approved"],
        "classes": {r["label"]: r["n"] for r in classes},
        "snr_db_min": stats["snr_min"],
        "snr_db_max": stats["snr_max"],
        "total_duration_s": float(stats["seconds"]),
    }


async def list_names(conn: asyncpg.Connection) -> list[str]:
    return [r["name"] for r in await conn.fetch("SELECT name FROM datasets ORDER BY name")]


async def select_recordings(
    conn: asyncpg.Connection, dataset: str, *, min_snr_db: float, only_approved: bool
) -> list[Recording]:
    """The recordings a job trains on, after its filters, in a stable order.

    Recordings without an SNR (imported without a manifest) count as clean and pass the SNR
    filter."""
    rows = await conn.fetch(
        "SELECT id::text, path, label, snr_db, approved, sample_rate, duration_s, channels"
        " FROM recordings WHERE dataset=$1 AND (snr_db IS NULL OR snr_db >= $2)"
        " AND (approved OR NOT $3) ORDER BY label, id",
        dataset,
        min_snr_db,
        only_approved,
    )
    return [Recording(**dict(r)) for r in rows]


def load_signal(path: str) -> tuple[np.ndarray, int]:
    return read_wav(Path(path))

"""Datasets and recordings in PostgreSQL; signal files in the blob store under
`datasets/<name>/` (with the default `file://` store: `<data dir>/datasets/<name>/`).

A recording's `path` is its key in the store (`datasets/<name>/...`); rows written before the
store existed hold an absolute local path, which still works where that file is."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from shared.dataset_names import check_dataset_name, inside
from shared.signals import content_digest, read_signal
from shared.storage import BlobStore
from shared.synth import SynthRecording, synth_dataset
from shared.wavio import write_wav

DATASETS = "datasets"
"""The store's prefix for recordings: `datasets/<name>/...`."""


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
    sha256: str | None = None
    """The content digest (`signals.content_digest`): what a cached copy is checked against."""


async def ensure_dataset(conn: asyncpg.Connection, name: str, description: str = "") -> None:
    await conn.execute(
        "INSERT INTO datasets (name, description) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        name,
        description,
    )


RECORDING_NAMESPACE = uuid.UUID("6d1f5a8e-3c47-4a8e-9a51-8f2b64f0c1d3")


def recording_id(dataset: str, name: str, digest: str) -> str:
    """A content-derived id: the same content under the same name in the same dataset always
    gets the same id, so a split seeded alike is alike, and a re-import adds nothing twice."""
    return str(uuid.uuid5(RECORDING_NAMESPACE, f"{dataset}\0{name}\0{digest}"))


_COLUMNS = (
    "id", "dataset", "path", "label", "snr_db", "approved", "sample_rate", "duration_s",
    "channels", "sha256",
)  # fmt: skip


async def add_recordings(conn: asyncpg.Connection, dataset: str, rows: list[Recording]) -> int:
    """Insert recordings (one COPY into a scratch table, one INSERT); ids already present are
    skipped, so importing or synthesising the same files again adds nothing. Returns how many
    were added."""
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS recordings_in (LIKE recordings INCLUDING DEFAULTS);"
            " TRUNCATE recordings_in"
        )
        await conn.copy_records_to_table(
            "recordings_in",
            columns=list(_COLUMNS),
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
                    r.sha256,
                )
                for r in rows
            ],
        )
        cols = ", ".join(_COLUMNS)
        status = await conn.execute(
            f"INSERT INTO recordings ({cols}) SELECT {cols} FROM recordings_in"
            " ON CONFLICT (id) DO NOTHING"
        )
    return int(status.rsplit(" ", 1)[-1])


def synthetic_id(dataset: str, label: str, samples: np.ndarray) -> str:
    """A content-derived id (label and samples), so the same `--seed` gives the same ids and
    therefore the same split."""
    digest = hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()
    return recording_id(dataset, label, digest)


async def write_synthetic(
    conn: asyncpg.Connection,
    store: BlobStore,
    name: str,
    samples: int,
    *,
    seed: int = 0,
    duration_s: float = 0.5,
    sample_rate: int = 8000,
) -> int:
    """Generate `samples` synthetic recordings: WAV files in the store under the dataset's
    prefix (written in place in a `file://` store, uploaded otherwise) plus their rows. IQ
    recordings are written as two-channel float32 WAV."""
    check_dataset_name(name)
    await ensure_dataset(conn, name, "synthetic RF recordings")
    generated = synth_dataset(samples, seed=seed, duration_s=duration_s, sample_rate=sample_rate)
    with tempfile.TemporaryDirectory(prefix="heimdall-synth-") as scratch:
        rows = await asyncio.to_thread(
            lambda: [_synthetic_file(store, name, rec, Path(scratch)) for rec in generated]
        )
    return await add_recordings(conn, name, rows)


def _synthetic_file(store: BlobStore, name: str, rec: SynthRecording, scratch: Path) -> Recording:
    rid = synthetic_id(name, rec.label, rec.samples)
    key = f"{DATASETS}/{name}/{rec.label}/{rid}.wav"
    local = store.local_path(key)
    path = inside(store.local_root, local) if store.local_root and local else scratch / "x.wav"
    iq = rec.samples.ndim == 2
    write_wav(path, rec.samples, rec.sample_rate, subtype="FLOAT" if iq else "PCM_16")
    digest = content_digest(path)
    store.put_file(key, path)
    return Recording(
        id=rid,
        path=key,
        label=rec.label,
        snr_db=rec.snr_db,
        approved=rec.approved,
        sample_rate=rec.sample_rate,
        duration_s=rec.samples.shape[0] / rec.sample_rate,
        channels=2 if iq else 1,
        sha256=digest,
    )


async def summarize(conn: asyncpg.Connection, name: str) -> dict[str, Any] | None:
    """Counts per class, approved count, SNR range, sample rates (recordings per rate), channels
    (real / IQ recordings) and durations of one dataset; None if it does not exist."""
    ds = await conn.fetchrow(
        "SELECT name, description, created_at FROM datasets WHERE name=$1", name
    )
    if ds is None:
        return None
    stats = await conn.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE approved) AS approved,"
        " min(snr_db) AS snr_min, max(snr_db) AS snr_max,"
        " coalesce(sum(duration_s), 0) AS seconds, min(duration_s) AS shortest,"
        " max(duration_s) AS longest, count(*) FILTER (WHERE channels = 2) AS iq"
        " FROM recordings WHERE dataset=$1",
        name,
    )
    classes = await conn.fetch(
        "SELECT label, count(*) AS n FROM recordings WHERE dataset=$1"
        " GROUP BY label ORDER BY label",
        name,
    )
    rates = await conn.fetch(
        "SELECT sample_rate, count(*) AS n FROM recordings WHERE dataset=$1"
        " GROUP BY sample_rate ORDER BY sample_rate",
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
        "sample_rates": {str(r["sample_rate"]): r["n"] for r in rates},
        "channels": {"real": stats["n"] - stats["iq"], "iq": stats["iq"]},
        "duration_s": {
            "min": stats["shortest"],
            "max": stats["longest"],
            "total": float(stats["seconds"]),
        },
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
        "SELECT id::text, path, label, snr_db, approved, sample_rate, duration_s, channels, sha256"
        " FROM recordings WHERE dataset=$1 AND (snr_db IS NULL OR snr_db >= $2)"
        " AND (approved OR NOT $3) ORDER BY label, id",
        dataset,
        min_snr_db,
        only_approved,
    )
    return [Recording(**dict(r)) for r in rows]


async def class_counts(
    conn: asyncpg.Connection, dataset: str, *, min_snr_db: float, only_approved: bool
) -> dict[str, int]:
    """Recordings per class that a job with these filters would train on (the same filter as
    `select_recordings`)."""
    rows = await conn.fetch(
        "SELECT label, count(*) AS n FROM recordings WHERE dataset=$1"
        " AND (snr_db IS NULL OR snr_db >= $2) AND (approved OR NOT $3) GROUP BY label",
        dataset,
        min_snr_db,
        only_approved,
    )
    return {r["label"]: r["n"] for r in rows}


def load_signal(path: str, max_frames: int | None = None) -> tuple[np.ndarray, int]:
    """A recording's samples (channels, n) and rate; at most `max_frames` frames."""
    return read_signal(Path(path), max_frames)

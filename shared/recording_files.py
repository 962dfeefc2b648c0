"""A recording's files and their keys in the blob store.

A recording is one file (WAV) or a SigMF pair (`.sigmf-meta` and the data file it names). An
imported recording's files go under `datasets/<dataset>/<recording id>/` with their own names,
so a SigMF pair keeps the names its metadata refers to, and no label or file name can reach
outside the dataset's prefix.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path, PurePosixPath

from shared.datasets import DATASETS, Recording
from shared.sigmfio import META_SUFFIX, read_meta
from shared.storage import BlobStore

UPLOAD_THREADS = 8
"""Uploads in flight at once: small recordings are bound by round trips, not bandwidth."""


def signal_files(main: Path) -> list[Path]:
    """The files of the recording whose main file is `main` (SigMF: metadata, then data)."""
    if main.name.lower().endswith(META_SUFFIX):
        return [main, read_meta(main).data_path]
    return [main]


def sibling_key(key: str, name: str) -> str:
    """The key of file `name` beside `key`."""
    return str(PurePosixPath(key).with_name(name))


def upload_recording(store: BlobStore, dataset: str, rec: Recording) -> Recording:
    """Put the files of `rec` (at its local `path`) into the store; `rec` with its key."""
    main = Path(rec.path)
    key = f"{DATASETS}/{dataset}/{rec.id}/{main.name}"
    for file in signal_files(main):
        store.put_file(sibling_key(key, file.name), file)
    return replace(rec, path=key)


def upload_recordings(store: BlobStore, dataset: str, recs: list[Recording]) -> list[Recording]:
    """Every recording of `recs` into the store, several at a time; in order, with keys."""
    with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload") as pool:
        return list(pool.map(lambda r: upload_recording(store, dataset, r), recs))

"""This worker's copies of recordings kept in object storage: downloaded once per dataset,
checked against their content hash, bounded in bytes, least recently used dataset out first.

Layout under the cache root: the objects at their keys (`datasets/<name>/...`), an index per
dataset (`index/<name>.json`: each recording's digest and its files' sizes and mtimes, so a
warm start checks a stat, not every byte) whose mtime is the dataset's last use, and a lock
per dataset (`locks/<name>.lock`) that a job holds shared while it trains; eviction takes it
exclusively without waiting, so a dataset in use by any process on this cache is never
removed. One preparer at a time per cache (`.lock`), so worker processes sharing a data dir
download a dataset once between them.

A `file://` store needs no cache: its recordings are read where they are.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import structlog

from services.worker.errors import DatasetError
from shared.datasets import Recording
from shared.errors import HeimdallError
from shared.recording_files import sibling_key, signal_files
from shared.signals import content_digest
from shared.storage import BlobStore

log = structlog.get_logger(__name__)

DOWNLOAD_THREADS = 8
"""Downloads in flight at once (recordings are small: round trips, not bandwidth, bound it)."""


class DatasetCache:
    """Local paths for a job's recordings (see the module doc)."""

    def __init__(self, store: BlobStore, root: Path, max_bytes: int) -> None:
        self.store = store
        self.root = root
        self.max_bytes = max_bytes

    @contextlib.contextmanager
    def holding(self, dataset: str) -> Iterator[None]:
        """While the block runs, `dataset` is not evicted (by this process or another)."""
        if self.store.is_local:
            yield
            return
        with _locked(self._lock_path(dataset), fcntl.LOCK_SH):
            yield

    def prepare(self, dataset: str, recordings: list[Recording]) -> list[Recording]:
        """`recordings` with local paths: cached copies (downloaded and verified where
        missing or changed) or, for a `file://` store, the store's own files. Raises
        DatasetError when an object is missing or its bytes are not what was imported."""
        if self.store.is_local:
            return [self._in_place(r) for r in recordings]
        with _locked(self.root / ".lock", fcntl.LOCK_EX):
            index = self._read_index(dataset)
            stale = [r for r in recordings if not _fresh(self.root, index.get(r.path), r)]
            if stale:
                log.info("downloading recordings", dataset=dataset, count=len(stale))
                with ThreadPoolExecutor(DOWNLOAD_THREADS, thread_name_prefix="cache") as pool:
                    for key, entry in pool.map(self._download, stale):
                        index[key] = entry
                self._write_index(dataset, index)
            else:
                os.utime(self._index_path(dataset))  # its last use, for the LRU order
            self._evict(keep=dataset)
        return [r if Path(r.path).is_absolute() else replace(r, path=str(self.root / r.path))
                for r in recordings]  # fmt: skip

    def _in_place(self, rec: Recording) -> Recording:
        local = None if Path(rec.path).is_absolute() else self.store.local_path(rec.path)
        return rec if local is None else replace(rec, path=str(local))

    def _download(self, rec: Recording) -> tuple[str, dict[str, Any]]:
        if Path(rec.path).is_absolute():  # a row from before the store: a local file
            return rec.path, {}
        main = self.root / rec.path
        try:
            self.store.get_file(rec.path, main)
            files = signal_files(main)
            for extra in files[1:]:
                self.store.get_file(sibling_key(rec.path, extra.name), extra)
            digest = content_digest(main)
        except HeimdallError as exc:
            raise DatasetError(f"recording {rec.id} ({rec.path}): {exc.detail}") from None
        if rec.sha256 is not None and digest != rec.sha256:
            for file in files:
                file.unlink(missing_ok=True)
            raise DatasetError(
                f"recording {rec.id} ({rec.path}) in storage does not match its import"
                f" (sha256 {digest[:12]}..., expected {rec.sha256[:12]}...); import it again"
            )
        stats = [(str(f.relative_to(self.root)), *_stat(f)) for f in files]
        return rec.path, {"sha256": digest, "files": stats}

    def _evict(self, keep: str) -> None:
        """Remove least recently used datasets (never `keep`, never one in use) until the
        cache fits `max_bytes`."""
        sizes = {}
        for path in (self.root / "index").glob("*.json"):
            entries = _load(path).values()
            sizes[path.stem] = sum(s for e in entries for _, s, _ in e.get("files", ()))
        total = sum(sizes.values())
        by_age = sorted(sizes, key=lambda name: self._index_path(name).stat().st_mtime)
        for name in by_age:
            if total <= self.max_bytes:
                break
            if name == keep:
                continue
            with contextlib.suppress(BlockingIOError):
                with _locked(self._lock_path(name), fcntl.LOCK_EX | fcntl.LOCK_NB):
                    self._index_path(name).unlink(missing_ok=True)
                    shutil.rmtree(self.root / "datasets" / name, ignore_errors=True)
                    total -= sizes[name]
                    log.info("dataset evicted from the cache", dataset=name, bytes=sizes[name])
        if total > self.max_bytes:
            log.warning("cache over its bound", bytes=total, max_bytes=self.max_bytes)

    def _index_path(self, dataset: str) -> Path:
        return self.root / "index" / f"{dataset}.json"

    def _lock_path(self, dataset: str) -> Path:
        return self.root / "locks" / f"{dataset}.lock"

    def _read_index(self, dataset: str) -> dict[str, Any]:
        return _load(self._index_path(dataset))

    def _write_index(self, dataset: str, index: dict[str, Any]) -> None:
        path = self._index_path(dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, path)


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _fresh(root: Path, entry: dict[str, Any] | None, rec: Recording) -> bool:
    """The cached copy is the one verified when it was downloaded, and the recording's."""
    if Path(rec.path).is_absolute():
        return True
    if not entry or (rec.sha256 is not None and entry.get("sha256") != rec.sha256):
        return False
    try:
        return all(_stat(root / name) == (size, mtime) for name, size, mtime in entry["files"])
    except OSError:
        return False


def _load(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@contextlib.contextmanager
def _locked(path: Path, mode: int) -> Iterator[IO[bytes]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        fcntl.flock(fh, mode)
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

"""A job's tracking output in the blob store, for machines that do not share this one's disk.

Each evaluation goes to `jobs/<job id>/evaluation/<phase>-epoch-<n>.json` as it arrives (the
document GET .../evaluation shows for that split). The TensorBoard event files go to
`tensorboard/<job id>/<file>` at most every `SYNC_INTERVAL_S` while the job runs and once more
when it ends; only files that changed since their last upload are sent. `heimdall
tensorboard` on any machine pulls them back (`pull_tensorboard`). With the default `file://`
store on the data dir the event files already are those objects, and nothing is copied.

Blocking I/O: the tracker calls these in a thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import msgspec
import structlog

from services.tracking.evaluation import artifact_name, evaluation_document
from shared.events import EvaluationCompleted, Event
from shared.storage import TENSORBOARD_PREFIX, BlobStore, check_key, job_key, tensorboard_key

log = structlog.get_logger(__name__)

SYNC_INTERVAL_S = 30.0
"""Longest time a running job's TensorBoard files in the store lag behind the local ones."""


class StoreExport:
    """One job's evaluations and TensorBoard files, copied to the store."""

    def __init__(
        self,
        store: BlobStore,
        job_id: str,
        tensorboard_dir: Path | None,
        interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.tensorboard_dir = tensorboard_dir
        self.interval_s = interval_s
        self._sent: dict[str, tuple[int, int]] = {}
        self._synced_at: float | None = None

    def write(self, events: Iterable[Event]) -> int:
        """Store the evaluations among `events`; returns how many."""
        count = 0
        for event in events:
            if isinstance(event, EvaluationCompleted):
                body = msgspec.json.encode(evaluation_document(event))
                self.store.put_bytes(job_key(self.job_id, artifact_name(event)), body)
                count += 1
        return count

    def sync_tensorboard(self, *, force: bool = False) -> int:
        """Upload the event files that changed, unless the last sync was under `interval_s`
        ago (`force`: now, as at the job's end); returns how many were uploaded."""
        folder = self.tensorboard_dir
        now = time.monotonic()
        if folder is None or not folder.is_dir():
            return 0
        if not force and self._synced_at is not None and now - self._synced_at < self.interval_s:
            return 0
        self._synced_at = now
        uploaded = 0
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            stat = path.stat()
            mark = (stat.st_size, stat.st_mtime_ns)
            if self._sent.get(path.name) == mark:
                continue
            self.store.put_file(tensorboard_key(self.job_id, path.name), path)
            self._sent[path.name] = mark
            uploaded += 1
        return uploaded


def pull_tensorboard(store: BlobStore, root: Path) -> int:
    """Download every job's TensorBoard files that the store has and `root` (the data dir's
    `tensorboard` folder) lacks or holds at another size; returns how many were downloaded.
    Nothing to do for a `file://` store on the data dir: they are the same files."""
    if (
        store.local_root is not None
        and (store.local_root / TENSORBOARD_PREFIX).resolve() == root.resolve()
    ):
        return 0
    pulled = 0
    for key, size in sorted(store.sizes(TENSORBOARD_PREFIX).items()):
        try:
            local = root / check_key(key).removeprefix(TENSORBOARD_PREFIX)
        except ValueError:  # a key no Heimdall wrote: nothing of ours
            continue
        if local.is_file() and local.stat().st_size == size:
            continue
        store.get_file(key, local)
        pulled += 1
    if pulled:
        log.info("tensorboard files pulled from storage", files=pulled, root=str(root))
    return pulled

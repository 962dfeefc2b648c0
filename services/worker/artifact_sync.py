"""A job's artifacts between this machine's job folder and the blob store.

The training process writes checkpoints and the ONNX model locally (atomically) and pushes
each to `jobs/<job id>/<name>` before it reports it, so whatever the API and other workers
are told of is in the store. Before a run starts the worker pulls the job's checkpoints (and
an `init_from_job` source's best weights) from the store, so a job resumes on any machine.
With the default `file://` store on the data dir the two places are one and nothing moves.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import structlog

from services.worker.checkpoint import BEST, LAST
from services.worker.resume import RESUME
from shared.errors import NotFound
from shared.storage import BlobStore, StorageConfig, job_key

log = structlog.get_logger(__name__)

RESUMABLE = (RESUME, LAST, BEST)
"""What a run continues from (the latest of resume.pt and last.pt) and exports (best.pt)."""


@lru_cache(maxsize=4)
def store_for(config: StorageConfig) -> BlobStore:
    """One client per store and process (it keeps its connections)."""
    return BlobStore(config)


def push(storage: StorageConfig | None, job_id: str, path: Path) -> None:
    """Upload the job's file `path` as `jobs/<job id>/<its name>`."""
    if storage is not None:
        store_for(storage).put_file(job_key(job_id, path.name), path)


def drop(storage: StorageConfig | None, job_id: str, name: str) -> None:
    """Remove the job's object `name` (a pause checkpoint a finished run no longer needs)."""
    if storage is not None:
        store_for(storage).delete(job_key(job_id, name))


def pull(store: BlobStore, job_id: str, out_dir: Path, names: tuple[str, ...]) -> list[str]:
    """Download the job's objects `names` that the store has into `out_dir`, replacing local
    copies (the store is the truth: another worker may have gone further); returns the names
    pulled. A local file the store lacks is removed, so no stale checkpoint is resumed."""
    pulled = []
    for name in names:
        key = job_key(job_id, name)
        local = out_dir / name
        here = store.local_path(key)
        if here is not None and here.resolve() == local.resolve():
            continue
        try:
            store.get_file(key, local)
        except NotFound:
            local.unlink(missing_ok=True)
            continue
        pulled.append(name)
    if pulled:
        log.info("artifacts pulled from storage", job_id=job_id, files=pulled)
    return pulled

"""What a job needs on this machine before its training process starts, from the blob store:
its recordings (through the dataset cache) and its checkpoints (to resume where any worker
left it), and what leaves the store with a deleted job."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from services.worker.artifact_sync import RESUMABLE, pull
from services.worker.cache import DatasetCache
from services.worker.checkpoint import BEST
from services.worker.errors import StorageError, WorkerError
from shared.config import TrainingConfig
from shared.datasets import Recording
from shared.errors import HeimdallError
from shared.settings import Settings
from shared.storage import BlobStore, StorageConfig, open_store


class Staging:
    """The worker's store and cache; one per worker process."""

    def __init__(self, settings: Settings, store: BlobStore | None = None) -> None:
        self.settings = settings
        self.storage = store.config if store is not None else StorageConfig.from_settings(settings)
        self.store = store if store is not None else open_store(settings)
        self.cache = DatasetCache(self.store, settings.cache_dir, settings.cache_max_bytes)

    @contextlib.contextmanager
    def holding(self, config: TrainingConfig) -> Iterator[None]:
        """While the job runs its dataset stays in the cache."""
        with self.cache.holding(config.dataset):
            yield

    async def stage(
        self, job_id: str, config: TrainingConfig, recordings: list[Recording], out_dir: Path
    ) -> list[Recording]:
        """The recordings with local paths, after the job's checkpoints (and its
        `init_from_job` source's best weights) were pulled from the store."""
        try:
            local = await asyncio.to_thread(self.cache.prepare, config.dataset, recordings)
            await asyncio.to_thread(pull, self.store, job_id, out_dir, RESUMABLE)
            if config.init_from_job is not None:
                source = str(uuid.UUID(config.init_from_job))
                folder = self.settings.artifacts_dir / source
                await asyncio.to_thread(pull, self.store, source, folder, (BEST,))
        except WorkerError:
            raise
        except HeimdallError as exc:  # the store is unreachable or refuses
            raise StorageError(f"object storage: {exc.detail}") from None
        return local

    def remove(self, job_id: str) -> int:
        """Delete every object of the job; returns how many there were."""
        return self.store.delete_job(job_id)

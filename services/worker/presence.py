"""A worker's presence: what its machine offers, announced in Redis every few seconds.

`probe` describes the machine once (devices, memory, versions, which ImageNet weights can be
had); `Presence.run_forever` keeps the worker's record alive (with the jobs it runs now) and
re-probes the weights now and then, since a cache can be filled and a network can come back.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import get_args

import msgspec
import psutil
import redis.asyncio as aredis
import structlog
import torch
from redis.exceptions import RedisError

from services.worker.hardware import usable_cores
from services.worker.model import cached_weights, hf_hub_id, hub_unreachable
from shared import workers
from shared.aio import raise_if_cancelling
from shared.capabilities import WorkerInfo
from shared.config import Architecture
from shared.settings import Settings

log = structlog.get_logger(__name__)

REPROBE_S = 300.0
"""How often the weights (cache and hub) are probed again."""


def weights_probe() -> tuple[bool, dict[str, bool]]:
    """(the hub answers, architecture → its ImageNet weights are cached here)."""
    cached = {}
    for arch in get_args(Architecture):
        hub_id = hf_hub_id(arch) or f"timm/{arch}"
        cached[arch] = cached_weights(hub_id) is not None
    return hub_unreachable() is None, cached


def probe(worker_id: str, max_jobs: int) -> WorkerInfo:
    """This machine, as a worker named `worker_id` running up to `max_jobs` jobs offers it."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    hub, cached = weights_probe()
    return WorkerInfo(
        id=worker_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        accelerators=["cpu", "gpu"] if gpus else ["cpu"],
        gpu_count=gpus,
        gpu_names=[torch.cuda.get_device_name(i) for i in range(gpus)],
        cpu_threads=usable_cores(),
        memory_bytes=psutil.virtual_memory().total,
        torch_version=str(torch.__version__),
        cuda_version=torch.version.cuda,
        hub_reachable=hub,
        pretrained_cached=cached,
        max_jobs=max_jobs,
        started_at=time.time(),
    )


class Presence:
    """Owns the worker's record: announced every `worker_heartbeat_s`, withdrawn on close."""

    def __init__(
        self,
        settings: Settings,
        client: aredis.Redis,
        info: WorkerInfo,
        running: Callable[[], list[str]],
    ) -> None:
        self._settings = settings
        self._client = client
        self.info = info
        self._running = running
        self._probed_at = time.monotonic()

    def current(self) -> WorkerInfo:
        """The record as of now (the jobs it runs are read at each call)."""
        return msgspec.structs.replace(self.info, running=self._running(), seen_at=time.time())

    async def beat(self) -> None:
        await workers.announce(self._client, self.current(), self._settings.worker_ttl_s)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except (RedisError, OSError) as exc:
                log.warning("worker heartbeat failed; retrying", error=str(exc))
            raise_if_cancelling()
            if time.monotonic() - self._probed_at > REPROBE_S:
                self._probed_at = time.monotonic()
                hub, cached = await asyncio.to_thread(weights_probe)
                self.info = msgspec.structs.replace(
                    self.info, hub_reachable=hub, pretrained_cached=cached
                )
            await asyncio.sleep(self._settings.worker_heartbeat_s)

    async def withdraw(self) -> None:
        try:
            await workers.withdraw(self._client, self.info.id)
        except (RedisError, OSError) as exc:
            log.warning("worker record not withdrawn; it expires", error=str(exc))

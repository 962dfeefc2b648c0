"""What a worker can run, and whether a config fits: one rule for the API and the workers.

Each worker announces a `WorkerInfo` (see `shared/workers.py`); the API refuses a config that
no connected worker could ever run (`admission`), and a worker leaves in the queue every job it
cannot run itself (`refusal`), so that a CPU worker never takes, and fails, a GPU job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from shared.config import TrainingConfig

SCHEMA_VERSION = 1


class WorkerInfo(msgspec.Struct, kw_only=True):
    """A worker's heartbeat record: who it is, what its machine offers, what it runs now."""

    id: str
    """`host:pid`, as the worker names itself in events and leases."""
    host: str
    pid: int
    accelerators: list[str]
    """`["cpu"]`, or `["cpu", "gpu"]` where CUDA works."""
    gpu_count: int = 0
    gpu_names: list[str] = []
    cpu_threads: int = 1
    """The cores the worker may use (its CPU affinity)."""
    memory_bytes: int = 0
    torch_version: str = ""
    cuda_version: str | None = None
    """The CUDA build of torch (None for a CPU build)."""
    hub_reachable: bool = False
    """The Hugging Face hub answered the worker's probe, so any ImageNet weights can be had."""
    pretrained_cached: dict[str, bool] = {}
    """Architecture → its ImageNet weights are in the worker's local Hugging Face cache."""
    max_jobs: int = 1
    running: list[str] = []
    """Ids of the jobs it trains now."""
    started_at: float = 0.0
    seen_at: float = 0.0
    """When this record was written (seconds since the epoch)."""
    v: int = SCHEMA_VERSION

    def can_load_weights(self, architecture: str) -> bool:
        return self.hub_reachable or self.pretrained_cached.get(architecture, False)

    @property
    def free_slots(self) -> int:
        return max(0, self.max_jobs - len(self.running))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a config cannot run: the config field to blame and a sentence about it."""

    field: str
    reason: str


def refusal(info: WorkerInfo, config: TrainingConfig) -> Refusal | None:
    """Why this worker cannot run `config`, or None when it can."""
    if config.accelerator == "gpu":
        if info.gpu_count == 0:
            return Refusal("accelerator", f"worker {info.id} has no GPU")
        if config.devices > info.gpu_count:
            return Refusal("devices", f"worker {info.id} has {info.gpu_count} GPU(s)")
    if config.pretrained and config.init_from_job is None:
        if not info.can_load_weights(config.model_architecture):
            return Refusal(
                "pretrained",
                f"worker {info.id} has no cached ImageNet weights of {config.model_architecture}"
                " and cannot reach the Hugging Face hub",
            )
    return None


def offers(workers: Sequence[WorkerInfo]) -> str:
    """What the connected workers offer, in a few words (for a refusal's message)."""
    gpus = [w.gpu_count for w in workers if w.gpu_count]
    parts = [f"{len(workers)} worker(s) connected"]
    parts.append(f"GPUs: {', '.join(map(str, gpus))} per worker" if gpus else "CPU only")
    cached = sorted({a for w in workers for a, ok in w.pretrained_cached.items() if ok})
    if any(w.hub_reachable for w in workers):
        parts.append("ImageNet weights: downloadable")
    else:
        parts.append(f"cached ImageNet weights: {', '.join(cached) or 'none'}")
    return "; ".join(parts)


_ADVICE = {
    "accelerator": "submit with accelerator='cpu', or start a worker on a machine with a GPU",
    "devices": "submit with fewer devices, or start a worker with that many GPUs",
    "pretrained": "submit with pretrained=false, or give a worker the weights (see the README)",
}


def admission(workers: Sequence[WorkerInfo], config: TrainingConfig) -> Refusal | None:
    """Why no connected worker could run `config` (the field that rules out the last
    candidates, with what the workers offer), or None when one can. No worker at all is no
    reason to refuse: jobs wait in the queue for workers that start later."""
    refusals = [refusal(w, config) for w in workers]
    if not workers or any(r is None for r in refusals):
        return None
    # The checks run in this order; the one that rules out the last candidates is to blame
    # (a CPU worker and a one-GPU worker refuse devices=2 for its devices, not its accelerator).
    order = ("accelerator", "devices", "pretrained")
    blamed = {r.field for r in refusals if r is not None}
    field = next(name for name in reversed(order) if name in blamed)
    what = {
        "accelerator": "accelerator 'gpu' was requested but no connected worker has a GPU",
        "devices": f"devices={config.devices} GPUs were requested but no connected worker has"
        " that many",
        "pretrained": f"pretrained=true needs the ImageNet weights of {config.model_architecture}"
        ", which no connected worker has cached or can download",
    }[field]
    return Refusal(
        field,
        f"config.{field}: {what} ({offers(workers)}); {_ADVICE[field]}, or add"
        " ?queue_anyway=true to queue it for a worker that joins later",
    )


def encode_info(info: WorkerInfo) -> bytes:
    return msgspec.json.encode(info)


_decoder = msgspec.json.Decoder(WorkerInfo)


def decode_info(data: bytes) -> WorkerInfo:
    """Raises msgspec.DecodeError/ValidationError for a record it cannot read."""
    return _decoder.decode(data)

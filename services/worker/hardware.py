"""Which device a job trains on, at which precision, with how many threads."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from services.worker.errors import AcceleratorUnavailable
from shared.config import TrainingConfig


def check_accelerator(config: TrainingConfig) -> None:
    """Fail at once when the config asks for GPUs this machine does not have."""
    if config.accelerator != "gpu":
        return
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none"
        raise AcceleratorUnavailable(
            "accelerator 'gpu' was requested but CUDA is not available on this worker"
            f" (torch {torch.__version__}, CUDA build {built}, no usable GPU found)."
            " Submit the job with accelerator='cpu', or run a worker on a machine with an"
            " NVIDIA GPU and a working driver."
        )
    available = torch.cuda.device_count()
    if config.devices > available:
        raise AcceleratorUnavailable(
            f"devices={config.devices} GPUs were requested but this worker has {available}."
            f" Submit with devices<={available}."
        )


def resolve_device(config: TrainingConfig, rank: int = 0) -> torch.device:
    """The device of data-parallel rank `rank` (one process per device)."""
    check_accelerator(config)
    if config.accelerator == "gpu":
        return torch.device("cuda", rank)
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """How a job computes: the autocast dtype (None: float32 throughout) and memory format."""

    dtype: torch.dtype | None
    channels_last: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    @property
    def scaled(self) -> bool:
        """float16 needs a GradScaler (its range underflows small gradients); bfloat16 not."""
        return self.dtype == torch.float16

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(
            device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        )


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic (AVX-512 BF16 or AMX); elsewhere bf16 is emulated, slowly."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(config: TrainingConfig, device: torch.device) -> Precision:
    """`precision` on `device`: `auto` keeps the seed's behaviour (float16 autocast and
    channels_last on GPUs, float32 on CPUs); `bf16` fails at once where it is not native."""
    gpu = device.type == "cuda"
    if config.precision == "fp32":
        return Precision(None, channels_last=gpu)
    if config.precision == "bf16":
        supported = torch.cuda.is_bf16_supported() if gpu else cpu_has_bf16()
        if not supported:
            where = "this GPU" if gpu else "this worker's CPU (no AVX-512 BF16 or AMX)"
            raise AcceleratorUnavailable(
                f"precision 'bf16' was requested but {where} has no native bfloat16."
                " Submit the job with precision='auto' (or 'fp32')."
            )
        return Precision(torch.bfloat16, channels_last=gpu)
    return Precision(torch.float16 if gpu else None, channels_last=gpu)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def train_threads(setting: int, concurrent_jobs: int, devices: int) -> int:
    """Torch threads for one training process: `setting` when given, else the usable cores
    divided among the worker's concurrent jobs and each job's processes (never below 1)."""
    if setting > 0:
        return setting
    return max(1, usable_cores() // max(1, concurrent_jobs) // max(1, devices))

"""Which device a job trains on, and the GPU-only speed-ups that go with it."""

from __future__ import annotations

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


def uses_amp(device: torch.device) -> bool:
    """Mixed precision (autocast + GradScaler) and channels_last run on GPUs only."""
    return device.type == "cuda"

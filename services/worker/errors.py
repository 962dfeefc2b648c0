"""The worker's errors: a small tree, each message a sentence a person can act on."""

from __future__ import annotations

from shared.errors import HeimdallError


class WorkerError(HeimdallError):
    """A job that cannot run as configured; the message becomes the job's `error_message`."""


class DatasetError(WorkerError):
    """The dataset is missing, empty after the filters, or unusable for classification."""


class AcceleratorUnavailable(WorkerError):
    """The config asks for hardware this worker does not have."""


class PretrainedWeightsUnavailable(WorkerError):
    """`pretrained: true` but the ImageNet weights are neither cached nor downloadable."""


class OnnxExportError(WorkerError):
    """The ONNX model could not be exported, or it disagrees with the PyTorch model."""


class TrainingCancelled(Exception):
    """Raised inside the trainer when a stop was requested; `phase` says where it was seen."""

    def __init__(self, phase: str) -> None:
        super().__init__(f"training stopped during {phase}")
        self.phase = phase


class InitCheckpointError(WorkerError):
    """`init_from_job` names a job whose best checkpoint is missing or does not fit."""


class StorageError(WorkerError):
    """The blob store could not give the job its recordings or checkpoints."""

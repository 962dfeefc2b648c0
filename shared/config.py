"""TrainingConfig: the seed's schema with its defaults and ranges, plus `dataset` and `seed`.

Every field has an effect in the worker; see `services/worker`. Validation happens once, at the
API edge, through msgspec: unknown keys, wrong types and out-of-range values are rejected with
an error that names the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shared.dataset_names import DatasetName
from shared.signal_info import MAX_NUM_SAMPLES, MAX_SAMPLE_RATE

Architecture = Literal[
    "convnext_tiny",
    "convnext_small",
    "convnext_large",
    "convnext_atto",
    "convnext_femto",
    "convnext_pico",
    "convnext_nano",
]
Scheduler = Literal["cosine", "step", "plateau"]
Accelerator = Literal["gpu", "cpu"]


class ConfigError(ValueError):
    """A config that cannot be trained; `field` names the offending key."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TrainingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a job trains and how. Field names, defaults and ranges follow the seed."""

    # Model
    model_architecture: Architecture = "convnext_tiny"
    pretrained: bool = True
    freeze_backbone: bool = False
    # Data
    batch_size: Annotated[int, Meta(ge=1, le=512)] = 32
    num_workers: Annotated[int, Meta(ge=0, le=16)] = 4
    validation_split: Annotated[float, Meta(ge=0.0, le=0.5)] = 0.2
    # Features
    n_mels: Annotated[int, Meta(ge=8, le=512)] = 128
    n_fft: Annotated[int, Meta(ge=32, le=16384)] = 2048
    hop_length: Annotated[int, Meta(ge=1, le=16384)] = 512
    # Training
    epochs: Annotated[int, Meta(ge=1, le=1000)] = 100
    learning_rate: Annotated[float, Meta(gt=0.0, le=10.0)] = 0.001
    weight_decay: Annotated[float, Meta(ge=0.0, le=10.0)] = 0.0001
    dropout_rate: Annotated[float, Meta(ge=0.0, le=0.9)] = 0.2
    # Scheduler
    lr_scheduler: Scheduler = "cosine"
    warmup_epochs: Annotated[int, Meta(ge=0, le=1000)] = 5
    early_stop_patience: Annotated[int, Meta(ge=1, le=1000)] = 10
    # Hardware
    accelerator: Accelerator = "gpu"
    devices: Annotated[int, Meta(ge=1, le=64)] = 1
    # Filters
    min_snr_db: Annotated[float, Meta(ge=-100.0, le=200.0)] = 10.0
    only_approved: bool = True
    # Extensions (contract)
    dataset: DatasetName = "default"
    seed: Annotated[int, Meta(ge=0, le=2**32 - 1)] | None = None
    # Signal bounds (issue 13): one rate, one capped length per job
    sample_rate: Annotated[int, Meta(ge=1, le=MAX_SAMPLE_RATE)] | None = None
    """Every recording is resampled to this rate (Hz); None: the dataset's most common rate."""
    num_samples: Annotated[int, Meta(ge=32, le=MAX_NUM_SAMPLES)] | None = None
    """Every recording is cropped (to its start) or zero-padded to this many samples at
    `sample_rate`; None: the longest recording's length, at most MAX_NUM_SAMPLES (1,048,576)."""

    def check(self) -> None:
        """Rules across fields, which per-field constraints cannot express."""
        if self.hop_length > self.n_fft:
            raise ConfigError(
                f"hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})",
                "hop_length",
            )
        if self.n_mels > self.n_fft // 2 + 1:
            raise ConfigError(
                f"n_mels ({self.n_mels}) must not exceed n_fft // 2 + 1 ({self.n_fft // 2 + 1}),"
                " the number of frequency bins",
                "n_mels",
            )

        if self.num_samples is not None and self.num_samples < self.n_fft:
            raise ConfigError(
                f"num_samples ({self.num_samples}) must be at least n_fft ({self.n_fft})",
                "num_samples",
            )

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return,unused-ignore]

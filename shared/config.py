"""TrainingConfig: the seed's schema with its defaults and ranges, plus `dataset`, `seed` and the
extensions of the contract (each off, or as the seed behaved, by default).

Every field has an effect in the worker; see `services/worker`. Validation happens once, at the
API edge, through msgspec: unknown keys, wrong types and out-of-range values are rejected with
an error that names the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shared.dataset_names import DatasetName
from shared.errors import InvalidInput
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
ClassWeighting = Literal["none", "balanced"]
Precision = Literal["auto", "fp32", "bf16"]
Monitor = Literal["val_loss", "val_accuracy", "val_macro_f1"]
JobRef = Annotated[
    str,
    Meta(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description="a job id (UUID)",
    ),
]
Fraction = Annotated[float, Meta(ge=0.0, le=0.5)]

MAX_HELD_OUT = 0.8
"""The largest `validation_split + test_split`: at least a fifth of the data trains."""


class ConfigError(InvalidInput):
    """A config that cannot be trained; `field` names the offending key."""


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
    test_split: Annotated[float, Meta(ge=0.0, le=0.5)] = 0.1
    """Share of each class held out as the test set (stratified and seeded like validation,
    disjoint from it), evaluated once after training with the best epoch's weights; 0.0: no
    test set. `validation_split + test_split` must not exceed MAX_HELD_OUT."""
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
    monitor: Monitor = "val_loss"
    """What picks the best epoch (its checkpoint and the exported ONNX model) and drives early
    stopping and the `plateau` scheduler: the validation loss (lowest wins), accuracy or
    macro-F1 (highest wins). Without a validation split only `val_loss` is allowed; it then
    monitors the training loss."""
    # Hardware
    accelerator: Accelerator = "gpu"
    devices: Annotated[int, Meta(ge=1, le=64)] = 1
    # Filters
    min_snr_db: Annotated[float, Meta(ge=-100.0, le=200.0)] = 10.0
    only_approved: bool = True
    # Extensions (contract)
    dataset: DatasetName = "default"
    seed: Annotated[int, Meta(ge=0, le=2**32 - 1)] | None = None
    # Augmentation (issue 16): training batches only, never validation or test; all off by
    # default. Waveform first (crop, noise, shift), then SpecAugment masks on the features.
    aug_time_crop: Annotated[float, Meta(ge=0.0, le=0.9)] = 0.0
    """Up to this fraction of each training waveform is cut: a random window of at least
    (1 - aug_time_crop) of its length is kept, moved to the start, the rest zero."""
    aug_noise_snr_db_min: Annotated[float, Meta(ge=-30.0, le=100.0)] | None = None
    """White noise at an SNR drawn per waveform from [min, max] dB; None: no noise."""
    aug_noise_snr_db_max: Annotated[float, Meta(ge=-30.0, le=100.0)] = 30.0
    aug_freq_shift_hz: Annotated[float, Meta(ge=0.0, le=1e9)] = 0.0
    """IQ recordings only: each training waveform is shifted in frequency by a random amount
    in [-x, +x] Hz (a real signal has no sign of frequency to shift; a job on real recordings
    says so in a warning and trains without it)."""
    aug_time_masks: Annotated[int, Meta(ge=0, le=10)] = 0
    """SpecAugment: this many time masks (frames set to the mean) per training example."""
    aug_time_mask_width: Fraction = 0.1
    """Widest time mask, as a fraction of the frames (each width is drawn from 0 to it)."""
    aug_freq_masks: Annotated[int, Meta(ge=0, le=10)] = 0
    """SpecAugment: this many frequency masks (bands set to the mean) per training example."""
    aug_freq_mask_width: Fraction = 0.1
    """Widest frequency mask, as a fraction of the bands."""
    # Fine-tuning, loss and optimisation (issue 16)
    init_from_job: JobRef | None = None
    """Start from that job's best checkpoint (same architecture; the head is re-initialised
    when its classes differ)."""
    class_weighting: ClassWeighting = "none"
    """`balanced`: loss weights inversely proportional to the train split's class counts."""
    label_smoothing: Annotated[float, Meta(ge=0.0, le=0.5)] = 0.0
    grad_clip_norm: Annotated[float, Meta(gt=0.0, le=1e6)] | None = None
    """Clip the gradients' total norm to this before each step; None: no clipping."""
    precision: Precision = "auto"
    """`auto`: float16 autocast on GPUs, float32 on CPUs; `bf16`: bfloat16 autocast (CPUs
    with native bf16, or GPUs); `fp32`: no autocast."""
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
        self._check_training()

    def _check_held_out(self) -> None:
        held = self.validation_split + self.test_split
        if held > MAX_HELD_OUT + 1e-9:
            raise ConfigError(
                f"validation_split + test_split ({self.validation_split:g} +"
                f" {self.test_split:g} = {held:g}) must not exceed {MAX_HELD_OUT:g}: at least"
                f" {1 - MAX_HELD_OUT:.0%} of each class must stay for training",
                "test_split",
            )
        if self.monitor != "val_loss" and self.validation_split == 0:
            raise ConfigError(
                f"monitor={self.monitor} needs a validation set; validation_split is 0.0"
                " (use monitor=val_loss, which then monitors the training loss)",
                "monitor",
            )

    def _check_training(self) -> None:
        self._check_held_out()
        if self.freeze_backbone and not (self.pretrained or self.init_from_job):
            raise ConfigError(
                "freeze_backbone trains the head alone, on the features of a trained backbone:"
                " it needs pretrained=true or init_from_job (a backbone of random weights would"
                " stay random)",
                "freeze_backbone",
            )
        low, high = self.aug_noise_snr_db_min, self.aug_noise_snr_db_max
        if low is not None and low > high:
            raise ConfigError(
                f"aug_noise_snr_db_min ({low}) must not exceed aug_noise_snr_db_max ({high})",
                "aug_noise_snr_db_min",
            )

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return,unused-ignore]

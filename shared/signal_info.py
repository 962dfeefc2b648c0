"""What a signal file is (rate, channels, frames) and the limits every imported one must meet.

One channel is a real signal; two are the I and Q parts of a complex baseband signal (`I + jQ`),
as SDR software records them. Anything else is refused at import, so a job never meets it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import InvalidInput

MIN_SAMPLE_RATE = 1
MAX_SAMPLE_RATE = 100_000_000
"""Sample rates accepted at import (1 Hz to 100 MHz): beyond that a header is more likely
corrupt than real, and resampling costs grow with the rate."""

MAX_CHANNELS = 2

MAX_NUM_SAMPLES = 1 << 20
"""The most samples a recording is given in training, at the job's rate (1,048,576: 131 s at
8 kHz, 5.5 s at 192 kHz); longer recordings are cropped to their start."""


class SignalFileError(InvalidInput):
    """A signal file that cannot be used; the message says why (the caller names the file)."""


@dataclass(frozen=True, slots=True)
class SignalInfo:
    sample_rate: int
    channels: int
    """1: real; 2: IQ (complex)."""
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    @property
    def is_iq(self) -> bool:
        return self.channels == 2


def _hz(rate: int) -> str:
    """A rate as written, unless a header's float made it hundreds of digits long."""
    return str(rate) if abs(rate) < 10**20 else f"{rate:.3g}"


def check_info(info: SignalInfo) -> None:
    """Raise SignalFileError unless the file is mono or IQ, has a frame and a sane rate."""
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise SignalFileError(
            f"sample rate {_hz(info.sample_rate)} Hz is outside {MIN_SAMPLE_RATE} Hz"
            f" to {MAX_SAMPLE_RATE // 1_000_000} MHz"
        )
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise SignalFileError(
            f"{info.channels} channels; a recording is mono (real) or two channels (I and Q)"
        )
    if info.frames < 1:
        raise SignalFileError("no samples (0 frames)")

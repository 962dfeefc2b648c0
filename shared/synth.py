"""Synthetic RF recordings: several modulation classes at a spread of SNRs, as a radio records
them: complex baseband (IQ), with the impairments of a real receiver and channel.

Every recording is `I + jQ` at the sample rate (two-sided band of ±rate/2), written as a
two-channel WAV. Each class sits at a random frequency offset in the band (either sign: only
IQ tells +f from -f), and passes through what a real link adds: a carrier frequency offset,
oscillator phase noise (a random walk), light multipath (a direct path plus one or two weak
echoes a few samples late) and white complex noise at the recording's SNR, so `min_snr_db`
visibly changes how learnable a dataset is. The digital classes are pulse-shaped (raised
cosine) symbol streams; BPSK and QPSK therefore share a power spectrum, as they do on air,
and differ in their phase (BPSK is real at baseband, up to the carrier: its spectrum mirrors
about the carrier; QPSK's does not). A share of recordings is not approved, so
`only_approved` changes the count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("noise", "cw", "am", "fm", "fsk", "bpsk", "qpsk")

PHASE_NOISE_RAD = 0.02
"""Standard deviation of the oscillator's phase step per sample (a Wiener process)."""


@dataclass(frozen=True, slots=True)
class SynthRecording:
    label: str
    samples: np.ndarray
    """float32 in [-1, 1] of shape (n, 2): I and Q."""
    sample_rate: int
    snr_db: float
    approved: bool


def _symbols(rng: np.random.Generator, n: int, sps: int, alphabet: int) -> np.ndarray:
    count = n // sps + 1
    return np.repeat(rng.integers(0, alphabet, count), sps)[:n]


def _shaped(rng: np.random.Generator, n: int, sps: int, points: np.ndarray) -> np.ndarray:
    """Symbols from `points` at `sps` samples each, raised-cosine shaped (roll-off 0.35)."""
    count = n // sps + 8
    impulses = np.zeros(count * sps, dtype=complex)
    impulses[::sps] = points[rng.integers(0, points.size, count)]
    t = np.arange(-4 * sps, 4 * sps + 1) / sps
    beta = 0.35
    denom = 1 - (2 * beta * t) ** 2
    safe = np.where(np.abs(denom) < 1e-8, 1.0, denom)
    pulse = np.where(np.abs(denom) < 1e-8, np.pi / 4 * np.sinc(1 / (2 * beta)),
                     np.sinc(t) * np.cos(np.pi * beta * t) / safe)  # fmt: skip
    return np.convolve(impulses, pulse, mode="same")[2 * sps : 2 * sps + n]


def _baseband(label: str, rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """The clean complex envelope of one class, centred at 0 Hz."""
    t = np.arange(n) / rate
    sps = max(4, rate // int(rng.choice([250, 500, 1000])))
    if label == "noise":
        return np.zeros(n, dtype=complex)
    if label == "cw":
        return _symbols(rng, n, rate // 20, 2).astype(complex)
    if label == "am":
        fm = rng.uniform(50, 300)
        return ((1 + 0.7 * np.cos(2 * np.pi * fm * t)) / 1.7).astype(complex)
    if label == "fm":
        fm, beta = rng.uniform(50, 300), rng.uniform(3, 8)
        return np.exp(1j * beta * np.sin(2 * np.pi * fm * t))
    if label == "fsk":
        dev = rng.uniform(0.03, 0.06) * rate
        bits = _symbols(rng, n, sps, 2) * 2 - 1
        return np.exp(1j * 2 * np.pi * np.cumsum(dev * bits) / rate)
    if label == "bpsk":
        return _shaped(rng, n, sps, np.array([1.0, -1.0], dtype=complex))
    if label == "qpsk":
        return _shaped(rng, n, sps, np.exp(1j * (np.pi / 4 + np.pi / 2 * np.arange(4))))
    raise ValueError(f"unknown class {label!r}")


def _channel(clean: np.ndarray, rng: np.random.Generator, rate: int) -> np.ndarray:
    """Frequency offset (where the signal sits in the band, either sign), phase noise and
    light multipath."""
    n = clean.size
    offset = rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.3) * rate
    phase = 2 * np.pi * offset * np.arange(n) / rate + rng.uniform(0, 2 * np.pi)
    phase += np.cumsum(rng.normal(0.0, PHASE_NOISE_RAD, n))
    moved = clean * np.exp(1j * phase)
    taps = np.zeros(int(rng.integers(2, 8)), dtype=complex)
    taps[0] = 1.0
    for _ in range(int(rng.integers(1, 3))):
        taps[int(rng.integers(1, taps.size))] += rng.uniform(0.05, 0.3) * np.exp(
            1j * rng.uniform(0, 2 * np.pi)
        )
    return np.convolve(moved, taps)[:n]


def synth_recording(
    label: str,
    rng: np.random.Generator,
    *,
    sample_rate: int = 8000,
    duration_s: float = 0.5,
    snr_db: float | None = None,
    approved: bool | None = None,
) -> SynthRecording:
    n = int(sample_rate * duration_s)
    snr = float(rng.uniform(-5.0, 30.0)) if snr_db is None else float(snr_db)
    signal = _channel(_baseband(label, rng, n, sample_rate), rng, sample_rate)
    power = float(np.mean(np.abs(signal) ** 2)) or 1.0
    sigma = np.sqrt(power / 10 ** (snr / 10) / 2)
    signal = signal + rng.normal(0.0, sigma, n) + 1j * rng.normal(0.0, sigma, n)
    signal = 0.9 * signal / (np.max(np.abs(np.concatenate([signal.real, signal.imag]))) or 1.0)
    return SynthRecording(
        label=label,
        samples=np.stack([signal.real, signal.imag], axis=1).astype(np.float32),
        sample_rate=sample_rate,
        snr_db=round(snr, 2),
        approved=bool(rng.random() < 0.85) if approved is None else approved,
    )


def synth_dataset(
    samples: int,
    *,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    sample_rate: int = 8000,
    duration_s: float = 0.5,
) -> list[SynthRecording]:
    """`samples` recordings, classes balanced round-robin, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return [
        synth_recording(
            classes[i % len(classes)], rng, sample_rate=sample_rate, duration_s=duration_s
        )
        for i in range(samples)
    ]

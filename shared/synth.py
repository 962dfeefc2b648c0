"""Synthetic RF recordings: several modulation classes at a spread of SNRs.

Each class has a distinct spectral signature (carrier, sidebands, keying), and white noise at
the recording's SNR hides it progressively, so `min_snr_db` visibly changes how learnable a
dataset is. A share of recordings is not approved, so `only_approved` changes the count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("noise", "cw", "am", "fm", "fsk", "bpsk", "qpsk")


@dataclass(frozen=True, slots=True)
class SynthRecording:
    label: str
    samples: np.ndarray
    """float32 in [-1, 1], mono."""
    sample_rate: int
    snr_db: float
    approved: bool


def _symbols(rng: np.random.Generator, n: int, sps: int, alphabet: int) -> np.ndarray:
    count = n // sps + 1
    return np.repeat(rng.integers(0, alphabet, count), sps)[:n]


def _clean(label: str, rng: np.random.Generator, t: np.ndarray, rate: int) -> np.ndarray:
    n = t.size
    fc = rng.uniform(0.15, 0.35) * rate  # carrier somewhere in the middle of the band
    phase0 = rng.uniform(0, 2 * np.pi)
    sps = max(4, rate // rng.choice([250, 500, 1000]))
    if label == "noise":
        return np.zeros(n)
    if label == "cw":
        keying = _symbols(rng, n, rate // 20, 2).astype(float)
        return keying * np.cos(2 * np.pi * fc * t + phase0)
    if label == "am":
        fm = rng.uniform(50, 300)
        return (1 + 0.7 * np.cos(2 * np.pi * fm * t)) / 1.7 * np.cos(2 * np.pi * fc * t + phase0)
    if label == "fm":
        fm, beta = rng.uniform(50, 300), rng.uniform(3, 8)
        return np.cos(2 * np.pi * fc * t + beta * np.sin(2 * np.pi * fm * t) + phase0)
    if label == "fsk":
        dev = rng.uniform(0.03, 0.06) * rate
        bits = _symbols(rng, n, sps, 2) * 2 - 1
        phase = 2 * np.pi * np.cumsum(fc + dev * bits) / rate
        return np.cos(phase + phase0)
    if label == "bpsk":
        bits = _symbols(rng, n, sps, 2)
        return np.cos(2 * np.pi * fc * t + np.pi * bits + phase0)
    if label == "qpsk":
        sym = _symbols(rng, n, sps, 4)
        return np.cos(2 * np.pi * fc * t + np.pi / 4 + np.pi / 2 * sym + phase0)
    raise ValueError(f"unknown class {label!r}")


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
    t = np.arange(n) / sample_rate
    snr = float(rng.uniform(-5.0, 30.0)) if snr_db is None else float(snr_db)
    clean = _clean(label, rng, t, sample_rate)
    power = float(np.mean(clean**2)) or 1.0
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr / 10)), n)
    signal = clean + noise
    signal = 0.9 * signal / (np.max(np.abs(signal)) or 1.0)
    return SynthRecording(
        label=label,
        samples=signal.astype(np.float32),
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

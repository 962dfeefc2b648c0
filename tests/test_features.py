"""Features of real and IQ recordings, padding that carries no signal, resampling and bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support import TINY
from support.recordings import complex_tone, write_iq_wav

from services.worker import loop
from services.worker.bounds import fit_length, resample
from services.worker.data import SignalFormat, load_waveform, signal_format
from services.worker.errors import DatasetError
from services.worker.features import (
    ExportSpectrogram,
    FeatureParams,
    LogMel,
    two_sided_bands,
)
from services.worker.progress import NeverStop
from services.worker.run import Run, TrainSpec, fit_features, prepare
from shared.config import TrainingConfig
from shared.datasets import Recording
from shared.synth import synth_dataset
from shared.wavio import write_wav

RATE = 8000


def _iq(signal: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.stack([signal.real, signal.imag]), dtype=torch.float32)


def test_iq_features_tell_positive_from_negative_frequency() -> None:
    params = FeatureParams(RATE, 4000, 256, 64, 32, channels="iq")
    logmel = LogMel(params)
    rng = np.random.default_rng(0)
    up, down = (_iq(complex_tone(f, RATE, 4000, rng, snr_db=30)) for f in (1000.0, -1000.0))
    feats = logmel(torch.stack([up, down]))  # (2, 1, bands, frames)
    assert feats.shape == (2, 1, 32, params.frames)
    peak_up, peak_down = (int(f[0].mean(dim=1).argmax()) for f in feats)
    # Band k is centred at -rate/2 + (k + 1/2) * rate / n_mels: ±1 kHz fall between bands
    # 19 and 20, and between 11 and 12.
    assert peak_up in (19, 20) and peak_down in (11, 12)
    assert float((feats[0] - feats[1]).abs().mean()) > 1.0
    # The same two tones as real signals (I only) cannot be told apart: that is what IQ adds.
    real = LogMel(FeatureParams(RATE, 4000, 256, 64, 32))
    mono = real(torch.stack([up[0], down[0]]))
    assert int(mono[0, 0].mean(dim=1).argmax()) == int(mono[1, 0].mean(dim=1).argmax())


def test_two_sided_bands_cover_the_axis_evenly() -> None:
    fb = two_sided_bands(FeatureParams(RATE, 4000, 256, 64, 32, channels="iq"))
    assert fb.shape == (256, 32)
    inner = fb.sum(dim=1)[16:-16]  # every bin away from the band edges weighs 1 in total
    assert torch.allclose(inner, torch.ones_like(inner), atol=1e-9)


@pytest.mark.parametrize("channels", ["real", "iq"])
@pytest.mark.parametrize(("n_fft", "hop"), [(256, 64), (255, 100)])
def test_export_spectrogram_matches_training(channels: str, n_fft: int, hop: int) -> None:
    params = FeatureParams(RATE, 3000, n_fft, hop, 32, channels=channels)  # type: ignore[arg-type]
    logmel = LogMel(params)
    rng = np.random.default_rng(1)
    wave = torch.stack([_iq(complex_tone(f, RATE, 3000, rng, 5)) for f in (300.0, -2500.0)])
    if channels == "real":
        wave = wave[:, 0]
    want = logmel(wave)
    got = ExportSpectrogram(logmel)(wave)
    assert torch.allclose(got, want, atol=2e-3), float((got - want).abs().max())


def _spec(recordings: list[Recording], out: Path, **overrides: object) -> TrainSpec:
    config = TrainingConfig(**{**TINY, "seed": 3, **overrides})  # type: ignore[arg-type]
    return TrainSpec("features", config, recordings, out, export_onnx=False)


def _demo(root: Path, count: int, duration_s: float) -> list[Recording]:
    out = []
    for i, rec in enumerate(synth_dataset(count, seed=4, duration_s=duration_s)):
        path = root / rec.label / f"{i}.wav"
        write_wav(path, rec.samples, rec.sample_rate, subtype="FLOAT")
        rid = f"00000000-0000-0000-0000-{i:012d}"
        out.append(Recording(rid, str(path), rec.label, rec.snr_db, True, RATE, duration_s, 2))
    return out


def _first_gradient_norm(run: Run) -> float:
    fit_features(run, NeverStop())
    wave, label = next(iter(run.train_loader))
    run.model.train()
    loss = torch.nn.functional.cross_entropy(run.model(loop._inputs(run, wave, train=True)), label)
    loss.backward()
    grads = [p.grad for p in run.network.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads))


def test_padding_carries_no_signal_first_batch_gradient_norm(tmp_path: Path) -> None:
    """The seed's defaults (n_fft 2048, hop 512, n_mels 128) on the demo's 0.5 s recordings
    give 8 frames, padded to 32; at hop 128 the same recordings give 32 frames, no padding."""
    recordings = _demo(tmp_path / "data", 28, 0.5)
    defaults = {"n_fft": 2048, "hop_length": 512, "n_mels": 128}
    padded = prepare(_spec(recordings, tmp_path / "a", **defaults))
    assert padded.params.frames == 8 and padded.params.image == (128, 32)
    unpadded = prepare(_spec(recordings, tmp_path / "b", **{**defaults, "hop_length": 128}))
    assert unpadded.params.frames == 32
    norms = (_first_gradient_norm(padded), _first_gradient_norm(unpadded))
    assert all(np.isfinite(norms)) and max(norms) / min(norms) < 10, norms


def test_resampling_keeps_the_tone_and_its_sign() -> None:
    rng = np.random.default_rng(2)
    tone = torch.from_numpy(complex_tone(-1000.0, 48000, 4800, rng, snr_db=40))
    for rate in (8000, 11025, 44100, 8001):
        out = resample(tone, 48000, rate)
        assert out.shape[-1] == round(4800 * rate / 48000)
        peak = torch.fft.fftfreq(out.numel(), 1 / rate)[torch.fft.fft(out).abs().argmax()]
        assert abs(float(peak) + 1000) < rate / out.numel() + 1
    assert fit_length(torch.ones(2, 5), 3).shape == (2, 3)
    assert torch.equal(fit_length(torch.ones(2, 2), 4), torch.tensor([[1.0, 1, 0, 0]] * 2))


def test_mixed_rates_load_at_one_rate_and_a_bounded_length(tmp_path: Path) -> None:
    """The dataset that exhausted memory: 1 Hz, 8 kHz and 192 kHz recordings of up to 4000
    samples (the 1 Hz one lasts 4000 s)."""
    rng = np.random.default_rng(3)
    recordings = []
    for i, rate in enumerate((1, 8000, 192000)):
        path = tmp_path / f"{rate}.wav"
        write_iq_wav(path, complex_tone(0.2 * rate, rate, 4000, rng), rate)
        rid = f"00000000-0000-0000-0000-{i:012d}"
        recordings.append(Recording(rid, str(path), "x", None, True, rate, 4000 / rate, 2))
    fmt = signal_format(recordings, TrainingConfig(**TINY))  # type: ignore[arg-type]
    # A tie between rates goes to the highest (nothing is thrown away); the length is capped.
    assert fmt.sample_rate == 192000 and fmt.num_samples == 1 << 20 and fmt.channels == 2
    for rec in recordings:
        wave = load_waveform(rec, fmt)
        assert wave.shape == (2, fmt.num_samples) and torch.isfinite(wave).all()
    small = SignalFormat(8000, 4000, 1)
    assert load_waveform(recordings[2], small).shape == (4000,)


def test_a_batch_that_cannot_fit_fails_at_once(tmp_path: Path) -> None:
    recordings = _demo(tmp_path / "data", 14, 0.25)
    huge = {"num_samples": 1 << 20, "hop_length": 1, "n_fft": 64, "n_mels": 32,
            "batch_size": 512, "validation_split": 0.0}  # fmt: skip
    with pytest.raises(DatasetError, match=r"a training batch needs about .* TiB"):
        prepare(_spec(recordings, tmp_path / "out", **huge))

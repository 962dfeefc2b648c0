"""The exported model on its own: onnxruntime on inputs of half and twice the training length
and on a file read from disk, mono and IQ, matching PyTorch within 1e-4; metadata_props."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
from support import TINY
from support.recordings import complex_tone, write_iq_wav

from services.worker.features import InferenceModel
from services.worker.onnx_export import export_onnx
from services.worker.progress import NeverStop
from services.worker.run import TrainSpec, fit_features, prepare
from shared.config import TrainingConfig
from shared.datasets import Recording
from shared.wavio import write_wav

RATE, LENGTH = 8000, 2000


def _recordings(root: Path, iq: bool) -> list[Recording]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        label = ("up", "down")[i % 2]
        tone = complex_tone(1000.0 if label == "up" else -1000.0, RATE, LENGTH, rng)
        path = root / label / f"{i}.wav"
        if iq:
            write_iq_wav(path, tone, RATE)
        else:
            write_wav(path, tone.real, RATE, subtype="FLOAT")
        rid = f"00000000-0000-0000-0000-{i:012d}"
        out.append(
            Recording(rid, str(path), label, None, True, RATE, LENGTH / RATE, 2 if iq else 1)
        )
    return out


@pytest.mark.parametrize("channels", ["iq", "real"])
def test_onnx_model_stands_alone(tmp_path: Path, channels: str) -> None:
    recordings = _recordings(tmp_path / "data", channels == "iq")
    config = TrainingConfig(**{**TINY, "seed": 1, "hop_length": 128})  # type: ignore[arg-type]
    run = prepare(TrainSpec("onnx", config, recordings, tmp_path / "out"))
    features = fit_features(run, NeverStop())
    network = run.network.cpu().eval()
    path = tmp_path / "model.onnx"
    sample = torch.stack([run.train_loader.dataset[i][0] for i in range(4)])
    export_onnx(features, network, sample, path, run.split.classes)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["classes"]) == run.split.classes == ["down", "up"]
    assert (props["sample_rate"], props["num_samples"]) == (str(RATE), str(LENGTH))
    assert props["channels"] == channels
    assert (props["n_fft"], props["hop_length"], props["n_mels"]) == ("256", "128", "32")
    assert props["bands"] == ("linear-two-sided" if channels == "iq" else "mel")

    reference = InferenceModel(features.logmel.cpu(), features.norm.cpu(), network, LENGTH).eval()
    rng = np.random.default_rng(5)
    lead = (3, 2) if channels == "iq" else (3,)
    for length in (LENGTH // 2, LENGTH * 2, 100):
        wave = torch.from_numpy(rng.normal(0, 0.3, (*lead, length)).astype(np.float32))
        got = session.run(["logits"], {"waveform": wave.numpy()})[0]
        with torch.inference_mode():
            want = reference(wave).numpy()
        assert got.shape == (3, 2)
        assert np.max(np.abs(got - want)) < 1e-4, (length, np.max(np.abs(got - want)))

    # A file from disk, as a user would feed it: soundfile gives (frames, channels).
    data, rate = sf.read(recordings[1].path, dtype="float32", always_2d=True)
    assert rate == int(props["sample_rate"])
    wave = data.T[None] if channels == "iq" else data.T[:1]
    got = session.run(["logits"], {"waveform": np.ascontiguousarray(wave)})[0]
    with torch.inference_mode():
        want = reference(torch.from_numpy(np.ascontiguousarray(wave))).numpy()
    assert np.max(np.abs(got - want)) < 1e-4

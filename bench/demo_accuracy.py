"""Per-class validation accuracy on the synthetic demo dataset (`heimdall up --demo`'s
generator), for before/after comparisons of the generator and the features.

Writes `--samples` recordings with `shared.synth` (seed 0) into a temporary folder, trains a
seeded job on them through the worker's own `prepare`/`run_epoch`, then reports the accuracy
per class on the validation split, overall and for recordings at >= 15 dB. Usage:

    .venv/bin/python bench/demo_accuracy.py --samples 700 --epochs 15
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from _machine import describe

from services.worker.loop import run_epoch
from services.worker.progress import NeverStop
from services.worker.run import TrainSpec, fit_features, prepare
from shared.config import TrainingConfig
from shared.datasets import Recording, synthetic_id
from shared.synth import synth_dataset
from shared.wavio import write_wav


class NullSink:
    def emit(self, event: object) -> None:
        return None


def make_recordings(root: Path, samples: int, duration_s: float) -> list[Recording]:
    out = []
    for rec in synth_dataset(samples, seed=0, duration_s=duration_s):
        rid = synthetic_id("demo", rec.label, rec.samples)
        path = root / rec.label / f"{rid}.wav"
        iq = rec.samples.ndim == 2
        write_wav(path, rec.samples, rec.sample_rate, subtype="FLOAT" if iq else "PCM_16")
        channels = 2 if iq else 1
        out.append(
            Recording(rid, str(path), rec.label, rec.snr_db, True, rec.sample_rate, duration_s,
                      channels)
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=700)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--duration", type=float, default=0.5)
    parser.add_argument("--model", default="convnext_atto")
    args = parser.parse_args()
    config = TrainingConfig(
        model_architecture=args.model,
        pretrained=False,
        accelerator="cpu",
        batch_size=32,
        num_workers=0,
        n_fft=256,
        hop_length=64,
        n_mels=64,
        epochs=args.epochs,
        warmup_epochs=0,
        learning_rate=0.002,
        early_stop_patience=1000,
        min_snr_db=-100.0,
        only_approved=False,
        seed=0,
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        recordings = make_recordings(tmp / "data", args.samples, args.duration)
        spec = TrainSpec("demo", config, recordings, tmp / "out", export_onnx=False)
        run = prepare(spec)
        fit_features(run, NeverStop())
        for epoch in range(1, args.epochs + 1):
            event = run_epoch(run, epoch, NullSink(), None, NeverStop())
        assert run.features is not None
        run.network.eval()
        preds: list[int] = []
        with torch.inference_mode():
            for wave, _ in run.val_loader:
                preds += run.network(run.features(wave)).argmax(1).tolist()
    hits: dict[str, list[bool]] = defaultdict(list)
    clean: dict[str, list[bool]] = defaultdict(list)
    for rec, pred in zip(run.split.val, preds, strict=True):
        ok = run.split.classes[pred] == rec.label
        hits[rec.label].append(ok)
        if rec.snr_db is not None and rec.snr_db >= 15:
            clean[rec.label].append(ok)
    print(f"machine: {describe()}; {time.perf_counter() - started:.0f} s")
    print(f"{len(run.split.train)} train / {len(run.split.val)} val, {args.epochs} epochs,"
          f" last val_accuracy {event.val_accuracy:.3f}")  # fmt: skip
    print("| class | val accuracy | at >= 15 dB |")
    print("|---|---|---|")
    for label in run.split.classes:
        all_, hi = hits[label], clean[label]
        hi_text = f"{np.mean(hi):.2f} (n={len(hi)})" if hi else "-"
        print(f"| {label} | {np.mean(all_):.2f} (n={len(all_)}) | {hi_text} |")


if __name__ == "__main__":
    main()

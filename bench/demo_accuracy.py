"""Per-class validation accuracy and macro-F1 on the synthetic demo dataset (`heimdall up
--demo`'s generator), for several variants of the same seeded job side by side in one run.

Writes `--samples` recordings with `shared.synth` (seed 0) into a temporary folder and trains a
seeded job per variant through the worker's own `prepare`/`run_epoch` (same split, same seed,
same epochs), then reports, per class, the accuracy on the validation split overall and for
recordings at >= 15 dB, and each variant's macro-F1. Variants:

- `real`: the recordings' I channel alone, as mono WAV (what the seed's mono demo and its
  IQ-averaged-to-mono features could see: no sign of frequency, no phase);
- `iq`: the recordings as written (two-channel IQ, two-sided features);
- `iq+aug`: `iq` with augmentation (SpecAugment masks, time crop, noise; `AUGMENTATION`).

    .venv/bin/python bench/demo_accuracy.py --samples 700 --epochs 15 --variants real,iq,iq+aug
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

AUGMENTATION: dict[str, Any] = {
    "aug_time_masks": 2,
    "aug_time_mask_width": 0.1,
    "aug_freq_masks": 2,
    "aug_freq_mask_width": 0.1,
    "aug_time_crop": 0.2,
    "aug_noise_snr_db_min": 10.0,
    "aug_noise_snr_db_max": 40.0,
}


class NullSink:
    def emit(self, event: object) -> None:
        return None


def make_recordings(root: Path, samples: int, duration_s: float, iq: bool) -> list[Recording]:
    """The demo's recordings; `iq=False` keeps the I channel only, as mono (under the same
    ids, so that every variant gets the same split)."""
    out = []
    for rec in synth_dataset(samples, seed=0, duration_s=duration_s):
        signal = rec.samples if iq else rec.samples[:, 0]
        rid = synthetic_id("demo", rec.label, rec.samples)
        path = root / rec.label / f"{rid}.wav"
        write_wav(path, signal, rec.sample_rate, subtype="FLOAT")
        channels = 2 if signal.ndim == 2 else 1
        out.append(
            Recording(rid, str(path), rec.label, rec.snr_db, True, rec.sample_rate, duration_s,
                      channels)
        )  # fmt: skip
    return out


@dataclass
class Result:
    classes: list[str]
    accuracy: dict[str, list[bool]]
    clean: dict[str, list[bool]]
    """Validation recordings at >= 15 dB."""
    macro_f1: float
    val_accuracy: float
    seconds: float


def macro_f1(truth: list[int], preds: list[int], k: int) -> float:
    scores = []
    for c in range(k):
        tp = sum(t == c and p == c for t, p in zip(truth, preds, strict=True))
        fp = sum(t != c and p == c for t, p in zip(truth, preds, strict=True))
        fn = sum(t == c and p != c for t, p in zip(truth, preds, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def evaluate(recordings: list[Recording], config: TrainingConfig, out: Path) -> Result:
    started = time.perf_counter()
    run = prepare(TrainSpec("demo", config, recordings, out, export_onnx=False))
    fit_features(run, NeverStop())
    for epoch in range(1, config.epochs + 1):
        run_epoch(run, epoch, NullSink(), None, NeverStop())
    run.network.eval()
    preds: list[int] = []
    truth: list[int] = []
    with torch.inference_mode():
        for wave, label in run.val_loader:
            preds += run.network(run.features(wave)).argmax(1).tolist()
            truth += label.tolist()
    hits: dict[str, list[bool]] = defaultdict(list)
    clean: dict[str, list[bool]] = defaultdict(list)
    for rec, pred in zip(run.split.val, preds, strict=True):
        ok = run.split.classes[pred] == rec.label
        hits[rec.label].append(ok)
        if rec.snr_db is not None and rec.snr_db >= 15:
            clean[rec.label].append(ok)
    return Result(
        classes=run.split.classes,
        accuracy=hits,
        clean=clean,
        macro_f1=macro_f1(truth, preds, len(run.split.classes)),
        val_accuracy=float(np.mean([t == p for t, p in zip(truth, preds, strict=True)])),
        seconds=time.perf_counter() - started,
    )


def _share(values: list[bool]) -> str:
    return f"{np.mean(values):.2f} (n={len(values)})" if values else "-"


def report(results: dict[str, Result]) -> None:
    names = list(results)
    print("| class | " + " | ".join(f"{n}: all | {n}: >= 15 dB" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for label in next(iter(results.values())).classes:
        cells = [
            f"{_share(r.accuracy[label])} | {_share(r.clean[label])}" for r in results.values()
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for what, value in (
        ("val accuracy", lambda r: f"{r.val_accuracy:.3f}"),
        ("val macro-F1", lambda r: f"{r.macro_f1:.3f}"),
        ("seconds", lambda r: f"{r.seconds:.0f}"),
    ):
        print(f"| **{what}** | " + " | ".join(f"{value(r)} | " for r in results.values()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=700)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--duration", type=float, default=0.5)
    parser.add_argument("--model", default="convnext_atto")
    parser.add_argument("--variants", default="real,iq,iq+aug")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base: dict[str, Any] = {
        "model_architecture": args.model, "pretrained": False, "accelerator": "cpu",
        "batch_size": 32, "num_workers": 0, "n_fft": 256, "hop_length": 64, "n_mels": 64,
        "epochs": args.epochs, "warmup_epochs": 0, "learning_rate": 0.002,
        "early_stop_patience": 1000, "min_snr_db": -100.0, "only_approved": False, "seed": 0,
    }  # fmt: skip
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = {
            iq: make_recordings(tmp / ("iq" if iq else "real"), args.samples, args.duration, iq)
            for iq in (False, True)
        }
        for variant in args.variants.split(","):
            fields = {**base, **(AUGMENTATION if variant.endswith("+aug") else {})}
            recordings = data[variant.startswith("iq")]
            results[variant] = evaluate(recordings, TrainingConfig(**fields), tmp / variant)
    total = len(next(iter(data.values())))
    print(f"machine: {describe()}; threads {torch.get_num_threads()}")
    print(f"{total} recordings (seed 0), {args.epochs} epochs, {args.model}, job seed 0")
    report(results)


if __name__ == "__main__":
    main()

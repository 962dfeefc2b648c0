"""`bench/train_overhead.py --options`: training samples/s of one prepared job under the
worker's thread setting against torch's default, and with bf16 autocast on and off, side by
side in one process (the variants alternate epoch by epoch, so load from other processes hits
them alike).

bf16 is measured wherever torch can run it; on a CPU without native bfloat16 (no AVX-512 BF16
or AMX) a job refuses `precision: bf16`, and the row says "emulated" so the figure shows why.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, replace

import torch

from services.worker.hardware import Precision, cpu_has_bf16, train_threads, usable_cores
from services.worker.loop import train_epoch
from services.worker.progress import NeverStop
from services.worker.run import Run


@dataclass(frozen=True)
class Variant:
    name: str
    threads: int
    precision: Precision


def variants(run: Run, default_threads: int, max_jobs: int) -> list[Variant]:
    """torch's default threads and the worker's setting (cores / max_jobs), fp32; then bf16
    at the worker's setting. A setting equal to the default is measured at 1 thread instead,
    so the two thread rows always differ."""
    setting = train_threads(0, max_jobs, 1)
    explicit = setting if setting != default_threads else 1
    fp32 = replace(run.precision, dtype=None)
    bf16 = replace(run.precision, dtype=torch.bfloat16)
    native = "native" if run.device.type == "cuda" or cpu_has_bf16() else "emulated"
    return [
        Variant(f"torch default ({default_threads} threads), fp32", default_threads, fp32),
        Variant(f"explicit {explicit} thread(s), fp32", explicit, fp32),
        Variant(f"explicit {explicit} thread(s), bf16 ({native})", explicit, bf16),
    ]


def compare(run: Run, epochs: int, max_jobs: int) -> list[tuple[str, str]]:
    """Rows (what, value) for the report: median train samples/s per variant and ratios."""
    default_threads = torch.get_num_threads()
    table = variants(run, default_threads, max_jobs)
    runs = {v.name: replace(run, precision=v.precision) for v in table}
    seconds: dict[str, list[float]] = {v.name: [] for v in table}
    load_before = os.getloadavg()
    for epoch in range(epochs + 1):  # round 0 warms every variant up
        for variant in table:
            torch.set_num_threads(variant.threads)
            started = time.perf_counter()
            train_epoch(runs[variant.name], epoch + 1, None, NeverStop())
            if epoch:
                seconds[variant.name].append(time.perf_counter() - started)
    torch.set_num_threads(default_threads)
    load_after = os.getloadavg()
    samples = len(run.split.train)
    rate = {name: samples / statistics.median(times) for name, times in seconds.items()}
    base = rate[table[0].name]
    rows = [
        ("usable cores", str(usable_cores())),
        ("load average (1 min) before / after", f"{load_before[0]:.1f} / {load_after[0]:.1f}"),
        ("train samples per epoch", f"{samples} (median of {epochs} epochs per variant)"),
    ]
    for variant in table:
        value = rate[variant.name]
        rows.append((variant.name, f"{value:.1f} samples/s ({value / base:.2f}x)"))
    bf16, fp32 = rate[table[2].name], rate[table[1].name]
    rows.append(("bf16 vs fp32 at the same threads", f"{bf16 / fp32:.2f}x"))
    return rows

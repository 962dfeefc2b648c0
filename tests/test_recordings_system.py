"""Real recordings through the whole system: imported with `heimdall data import`, trained by a
real worker, read back over the API. IQ keeps the sign of frequency; an odd mixed-rate dataset
trains within bounded memory, and a batch that cannot fit fails at once with the reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from support import TINY, running_system, wait_for
from support.cli import run_heimdall
from support.memory import sampled_rss
from support.recordings import complex_tone, write_iq_wav

from shared.settings import Settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]

JOBS = "/api/v1/training/jobs"
RSS_BOUND = 3 * 2**30
"""No process of the system may pass this while training the mixed-rate dataset (the
unbounded loader reached 7.7 GB in two minutes)."""


def _import(settings: Settings, src: Path, name: str) -> None:
    done = run_heimdall(settings, "data", "import", str(src), "--dataset", name)
    assert done.returncode == 0, done.stderr


async def _finish(client: httpx.AsyncClient, config: dict[str, Any]) -> dict[str, Any]:
    created = await client.post(JOBS, json={"job_name": "rec", "config": config})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    async def finished() -> dict[str, Any] | None:
        job = (await client.get(f"{JOBS}/{job_id}")).json()["job"]
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    return await wait_for(finished, timeout=300, what="the job to finish")  # type: ignore[no-any-return]


async def test_complex_tones_of_opposite_sign_are_learned_from_iq_wav(
    settings: Settings, tmp_path: Path
) -> None:
    """+1 kHz and -1 kHz tones as two-channel float32 WAV: identical once averaged to mono
    (val accuracy 0.5 by construction), told apart as IQ."""
    rng = np.random.default_rng(11)
    src = tmp_path / "tones"
    for i in range(24):
        for label, freq in (("plus", 1000.0), ("minus", -1000.0)):
            write_iq_wav(src / label / f"{i}.wav", complex_tone(freq, 8000, 2000, rng, 5.0), 8000)
    _import(settings, src, "tones")
    async with running_system(settings) as client:
        summary = (await client.get("/api/v1/datasets/tones")).json()
        assert summary["channels"] == {"real": 0, "iq": 48}
        config = {**TINY, "dataset": "tones", "epochs": 4, "seed": 2, "validation_split": 0.25}
        job = await _finish(client, config)
        assert job["status"] == "completed", job["error_message"]
        metrics = (await client.get(f"{JOBS}/{job['id']}/metrics")).json()["metrics"]
    assert metrics[-1]["val_accuracy"] >= 0.9, [m["val_accuracy"] for m in metrics]


def _mixed_rates(root: Path) -> Path:
    """18 WAVs at 1 Hz, 8 kHz and 192 kHz, each at most 4000 samples (the 1 Hz ones last
    over an hour), in two classes."""
    rng = np.random.default_rng(12)
    for i in range(18):
        rate = (1, 8000, 192000)[i % 3]
        label = ("a", "b")[i % 2]
        n = int(rng.integers(1000, 4001))
        tone = complex_tone((0.2 if label == "a" else -0.2) * rate, rate, n, rng)
        write_iq_wav(root / label / f"{i}.wav", tone, rate)
    return root


async def test_mixed_rate_dataset_trains_in_bounded_memory_or_fails_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    _import(settings, _mixed_rates(tmp_path / "mixed"), "mixed")
    base = {**TINY, "dataset": "mixed", "seed": 4, "validation_split": 0.25}
    with sampled_rss() as rss:
        async with running_system(settings) as client:
            summary = (await client.get("/api/v1/datasets/mixed")).json()
            assert summary["sample_rates"] == {"1": 6, "8000": 6, "192000": 6}
            # Unbounded, the longest recording (4000 s) at the common rate would be 768M
            # samples; capped at 2**20 and with batches of 512 it cannot fit: the job fails
            # before its first batch, saying why.
            started = time.monotonic()
            failed = await _finish(client, {**base, "batch_size": 512, "epochs": 1})
            assert failed["status"] == "failed"
            assert "a training batch needs about" in failed["error_message"]
            assert "lower batch_size or num_samples" in failed["error_message"]
            print(f"over-budget job failed after {time.monotonic() - started:.1f} s")
            # Bounded by the config, it trains: every recording resampled to one rate and cut
            # to one length.
            job = await _finish(client, {**base, "epochs": 2, "num_samples": 48000})
            assert job["status"] == "completed", job["error_message"]
    name, peak = rss.largest
    print(f"largest RSS {peak / 2**20:.0f} MiB ({name}) over {len(rss.peaks)} processes")
    assert peak < RSS_BOUND, rss.peaks

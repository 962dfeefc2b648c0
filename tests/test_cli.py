"""`heimdall up` and the data commands as a user runs them: real subprocesses, embedded stores."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from support.processes import Up, cli_env

from shared.net import free_port
from shared.wavio import write_wav


def _heimdall(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's basetemp, which concurrent pytest sessions reset to mode 0700 (the
    # embedded PostgreSQL runs as its own user when we are root).
    root = Path(tempfile.mkdtemp(prefix="heimdall-cli-"))
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)


def test_up_starts_serves_stops_cleanly_and_keeps_data(data_dir: Path) -> None:
    up = Up(data_dir, free_port(), "--workers", "1", "--demo")
    try:
        up.wait_ready()
        tree = psutil.Process(up.proc.pid).children(recursive=True)
        assert len(tree) >= 3  # recorder, worker, api (+ embedded servers)
        assert httpx.get(f"{up.base}/ready").status_code == 200
        summary = httpx.get(f"{up.base}/api/v1/datasets/default").json()
        assert summary["recordings"] == 350 and len(summary["classes"]) == 7

        # `heimdall data synth` joins the running system's stores (same data dir).
        done = _heimdall(
            "data",
            "synth",
            "--dataset",
            "extra",
            "--samples",
            "14",
            "--duration",
            "0.1",
            "--data-dir",
            str(data_dir),
        )
        assert done.returncode == 0, done.stderr
        assert httpx.get(f"{up.base}/api/v1/datasets/extra").json()["recordings"] == 14

        # The seed's defaults want a GPU and ImageNet weights, which the worker may already
        # have said it lacks (a 422 then); queued anyway, it waits untouched.
        created = httpx.post(
            f"{up.base}/api/v1/training/jobs",
            json={"job_name": "kept", "config": {"epochs": 1}},
            params={"queue_anyway": "true"},
        )
        assert created.status_code == 201, created.text
        job = created.json()
        assert httpx.get(f"{up.base}/api/v1/training/jobs/{job['id']}").status_code == 200
    finally:
        code = up.stop()
    assert code == 0, up.log.read_text()
    for proc in tree:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE, proc
    assert not (data_dir / "postgres" / "postmaster.pid").exists()

    # Everything survives a restart on the same data dir.
    again = Up(data_dir, free_port(), "--workers", "0")
    try:
        again.wait_ready()
        jobs = httpx.get(f"{again.base}/api/v1/training/jobs").json()
        assert [j["job_name"] for j in jobs["jobs"]] == ["kept"]
        names = [d["name"] for d in httpx.get(f"{again.base}/api/v1/datasets").json()["datasets"]]
        assert names == ["default", "extra"]
    finally:
        assert again.stop() == 0


def test_data_import_reads_class_folders_and_manifest(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "recordings"
    rng = np.random.default_rng(0)
    for label in ("am", "fm"):
        for i in range(3):
            write_wav(src / label / f"{i}.wav", rng.uniform(-0.5, 0.5, 800), 8000)
    (src / "manifest.csv").write_text("file,label,snr_db,approved\nam/0.wav,am,3.5,false\n")
    done = _heimdall("data", "import", str(src), "--dataset", "real", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert "imported 6 recordings" in done.stdout

    bad = _heimdall(
        "data", "import", str(tmp_path / "nowhere"), "--dataset", "x", "--data-dir", str(data_dir)
    )
    assert bad.returncode == 2 and "is not a directory" in bad.stderr
    (tmp_path / "empty").mkdir()
    none = _heimdall(
        "data", "import", str(tmp_path / "empty"), "--dataset", "x", "--data-dir", str(data_dir)
    )
    assert none.returncode == 2 and "no recordings found" in none.stderr

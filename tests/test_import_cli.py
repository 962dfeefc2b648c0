"""`heimdall data import` and `data synth` as a user runs them (real subprocesses) against
this test's database: all-or-nothing by default, `--skip-bad`, checked names and paths."""

from __future__ import annotations

import subprocess
from pathlib import Path

import asyncpg
import numpy as np
from support.cli import run_heimdall
from support.recordings import complex_tone, raw_wav, write_iq_wav

from shared.settings import Settings
from shared.wavio import write_wav


def _heimdall(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_heimdall(settings, *args)


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(2):
        write_iq_wav(root / "up" / f"{i}.wav", complex_tone(1000, 8000, 400, rng), 8000)
        write_wav(root / "flat" / f"{i}.wav", rng.uniform(-0.5, 0.5, 400), 8000)
    return root


def _files_outside(root: Path, source: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and source not in p.relative_to(root).parts]


async def _datasets(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT d.name, count(r.id) AS n FROM datasets d"
        " LEFT JOIN recordings r ON r.dataset = d.name GROUP BY d.name"
    )
    return {r["name"]: r["n"] for r in rows}


async def test_import_is_all_or_nothing_unless_skip_bad(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    src = _folder(tmp_path / "rec")
    raw_wav(src / "up" / "zero.wav", rate=0)
    raw_wav(src / "flat" / "cut.wav", cut=7)
    (src / "manifest.csv").write_text("file,label,snr_db,approved\nflat/0.wav,flat,x,true\n")

    done = _heimdall(settings, "data", "import", str(src), "--dataset", "real")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    for name in ("up/zero.wav: sample rate 0 Hz", "flat/cut.wav: truncated", "manifest.csv:2"):
        assert name in done.stderr, done.stderr
    assert "nothing imported" in done.stderr
    assert await _datasets(db) == {}

    done = _heimdall(settings, "data", "import", str(src), "--dataset", "real", "--skip-bad")
    assert done.returncode == 0, done.stderr
    assert "up/zero.wav" in done.stderr and "imported 4 recordings" in done.stdout
    assert await _datasets(db) == {"real": 4}
    channels = await db.fetch("SELECT label, channels FROM recordings ORDER BY label")
    assert {(r["label"], r["channels"]) for r in channels} == {("flat", 1), ("up", 2)}

    # Content-derived ids: importing the same files again adds nothing.
    done = _heimdall(settings, "data", "import", str(src), "--dataset", "real", "--skip-bad")
    assert done.returncode == 0 and "imported 0 recordings" in done.stdout, done.stdout
    assert await _datasets(db) == {"real": 4}


async def test_dataset_names_follow_one_rule_and_files_stay_in_the_data_dir(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    src = _folder(tmp_path / "rec")
    for name in ("../../x", "..", ".", "../x y/'\"; --"):
        for args in (
            ("data", "synth", "--dataset", name, "--samples", "2", "--duration", "0.1"),
            ("data", "import", str(src), "--dataset", name),
        ):
            done = _heimdall(settings, *args)
            assert done.returncode == 2, (args, done.stderr)
            assert "dataset name" in done.stderr and "Traceback" not in done.stderr
    assert await _datasets(db) == {}
    assert _files_outside(tmp_path, "rec") == []

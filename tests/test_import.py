"""Importing real recordings: every WAV format and SigMF datatype (files written here), and
every kind of bad file named with its reason, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support.recordings import complex_tone, raw_wav, write_iq_wav

from shared.importer import scan_import_dir
from shared.sigmfio import write_sigmf
from shared.signals import read_signal
from shared.wavio import write_wav

RATE = 8000
WAV_SUBTYPES = ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"]
SIGMF_TYPES = ["cf32_le", "ci16_le", "rf32_le", "ri16_le", "cf64_le", "ci8", "cu8", "ri32_be"]
TOLERANCE = {"PCM_U8": 1 / 64, "ci8": 1 / 64, "cu8": 1 / 64}


@pytest.mark.parametrize("subtype", WAV_SUBTYPES)
@pytest.mark.parametrize("container", ["WAV", "WAVEX"])
def test_every_wav_format_reads_mono_and_iq(tmp_path: Path, subtype: str, container: str) -> None:
    rng = np.random.default_rng(0)
    iq = complex_tone(1000.0, RATE, 400, rng)
    mono = iq.real
    sf.write(tmp_path / "m.wav", mono, RATE, subtype=subtype, format=container)
    sf.write(tmp_path / "q.wav", np.stack([iq.real, iq.imag], 1), RATE, subtype=subtype,
             format=container)  # fmt: skip
    tol = TOLERANCE.get(subtype, 1e-3)
    samples, rate = read_signal(tmp_path / "m.wav")
    assert rate == RATE and samples.shape == (1, 400) and samples.dtype == np.float32
    assert np.max(np.abs(samples[0] - mono)) < tol
    samples, _ = read_signal(tmp_path / "q.wav")
    assert samples.shape == (2, 400)
    assert np.max(np.abs(samples[0] + 1j * samples[1] - iq)) < 2 * tol


@pytest.mark.parametrize("datatype", SIGMF_TYPES)
def test_every_sigmf_datatype_reads(tmp_path: Path, datatype: str) -> None:
    iq = complex_tone(-1000.0, RATE, 300, np.random.default_rng(1))
    signal = iq if datatype.startswith("c") else iq.real
    write_sigmf(tmp_path / "x.sigmf-meta", signal, RATE, datatype)
    samples, rate = read_signal(tmp_path / "x.sigmf-meta")
    assert rate == RATE and samples.dtype == np.float32
    tol = TOLERANCE.get(datatype, 1e-3)
    if datatype.startswith("c"):
        assert samples.shape == (2, 300)
        assert np.max(np.abs(samples[0] + 1j * samples[1] - iq)) < 2 * tol
    else:
        assert samples.shape == (1, 300)
        assert np.max(np.abs(samples[0] - iq.real)) < tol
    head, _ = read_signal(tmp_path / "x.sigmf-meta", max_frames=10)
    assert head.shape[1] == 10 and np.array_equal(head, samples[:, :10])


def test_import_scan_takes_labels_snr_and_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    write_iq_wav(tmp_path / "up" / "a.wav", complex_tone(1000, RATE, 800, rng), RATE)
    write_wav(tmp_path / "up" / "b.wav", rng.uniform(-0.5, 0.5, 800), RATE, subtype="PCM_24")
    snr = [{"core:sample_start": 0, "core:sample_count": 10, "heimdall:snr_db": 12.5}]
    write_sigmf(tmp_path / "down" / "c.sigmf-meta", complex_tone(-1000, RATE, 800, rng), 48000,
                "ci16_le", annotations=snr)  # fmt: skip
    (tmp_path / "manifest.csv").write_text("file,label,snr_db,approved\nup/b.wav,,3,no\n")
    scan = scan_import_dir(tmp_path, "real")
    assert scan.bad == []
    got = {Path(r.path).name: r for r in scan.recordings}
    assert set(got) == {"a.wav", "b.wav", "c.sigmf-meta"}
    assert (got["a.wav"].channels, got["a.wav"].label, got["a.wav"].snr_db) == (2, "up", None)
    assert (got["b.wav"].channels, got["b.wav"].snr_db, got["b.wav"].approved) == (1, 3.0, False)
    c = got["c.sigmf-meta"]
    assert (c.channels, c.label, c.snr_db, c.sample_rate) == (2, "down", 12.5, 48000)
    assert c.duration_s == pytest.approx(800 / 48000)
    # Content-derived ids: the same files give the same ids; other bytes give another id.
    assert [r.id for r in scan_import_dir(tmp_path, "real").recordings] == [
        r.id for r in scan.recordings
    ]
    write_wav(tmp_path / "up" / "b.wav", rng.uniform(-0.5, 0.5, 800), RATE)
    again = {Path(r.path).name: r.id for r in scan_import_dir(tmp_path, "real").recordings}
    assert again["a.wav"] == got["a.wav"].id and again["b.wav"] != got["b.wav"].id


def _bad_folder(root: Path) -> dict[str, str]:
    """One good file and every kind of bad one; returns {bad name: words its reason has}."""
    rng = np.random.default_rng(3)
    write_wav(root / "ok" / "good.wav", rng.uniform(-0.5, 0.5, 400), RATE)
    raw_wav(root / "ok" / "rate0.wav", rate=0)
    raw_wav(root / "ok" / "rate_max.wav", rate=2**32 - 1)
    raw_wav(root / "ok" / "rate_big.wav", rate=200_000_000)
    raw_wav(root / "ok" / "truncated.wav", frames=100, cut=51)
    raw_wav(root / "ok" / "empty.wav", frames=0)
    write_wav(root / "ok" / "five.wav", rng.uniform(-0.5, 0.5, (100, 5)), RATE)
    raw_wav(root / "ok" / "many.wav", channels=65535, frames=1)
    (root / "ok" / "text.wav").write_text("not a wav")
    write_sigmf(root / "ok" / "cut.sigmf-meta", complex_tone(0, RATE, 50, rng), RATE)
    with (root / "ok" / "cut.sigmf-data").open("r+b") as fh:
        fh.truncate(50 * 8 - 3)
    write_sigmf(root / "ok" / "dtype.sigmf-meta", complex_tone(0, RATE, 50, rng), RATE)
    meta = json.loads((root / "ok" / "dtype.sigmf-meta").read_text())
    meta["global"]["core:datatype"] = "cf33_le"
    (root / "ok" / "dtype.sigmf-meta").write_text(json.dumps(meta))
    (root / "ok" / "orphan.sigmf-data").write_bytes(bytes(16))
    (root / "manifest.csv").write_text(
        "file,label,snr_db,approved\nok/good.wav,ok,loud,yes\nok/good.wav,ok,1,maybe\n"
    )
    return {
        "ok/rate0.wav": "sample rate 0 Hz is outside",
        "ok/rate_max.wav": "sample rate 4294967295 Hz is outside",
        "ok/rate_big.wav": "sample rate 200000000 Hz is outside 1 Hz to 100 MHz",
        "ok/truncated.wav": "truncated: the data chunk is 51 bytes short",
        "ok/empty.wav": "0 frames",
        "ok/five.wav": "5 channels",
        "ok/many.wav": "65535 channels",
        "ok/text.wav": "not a readable WAV",
        "ok/cut.sigmf-meta": "truncated",
        "ok/dtype.sigmf-meta": "cf33_le",
        "ok/orphan.sigmf-data": "without its orphan.sigmf-meta",
        "manifest.csv:2": "snr_db 'loud' is not a number",
        "manifest.csv:3": "approved 'maybe'",
    }


def test_every_bad_file_is_named_with_its_reason(tmp_path: Path) -> None:
    expected = _bad_folder(tmp_path)
    scan = scan_import_dir(tmp_path, "hostile")
    reasons = {b.name: b.reason for b in scan.bad}
    assert set(reasons) == set(expected), reasons
    for name, words in expected.items():
        assert words in reasons[name], (name, reasons[name])
    assert [Path(r.path).name for r in scan.recordings] == ["good.wav"]


def test_bad_names_and_folders_are_refused(tmp_path: Path) -> None:
    for name in ["../x", ".", "..", "../x y/'\"; --", "-rf", "a/b", "", "x" * 101, "é"]:
        with pytest.raises(ValueError, match="dataset name"):
            scan_import_dir(tmp_path, name)
    with pytest.raises(ValueError, match="not a directory"):
        scan_import_dir(tmp_path / "nowhere", "x")
    with pytest.raises(ValueError, match="no recordings found"):
        scan_import_dir(tmp_path, "x")


def test_dataset_files_never_leave_the_datasets_dir(tmp_path: Path) -> None:
    from shared.dataset_names import dataset_dir, inside

    root = tmp_path / "datasets"
    (root).mkdir()
    assert dataset_dir(root, "ok") == (root / "ok").resolve()
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="outside"):
        dataset_dir(root, "link")
    with pytest.raises(ValueError, match="outside"):
        inside(root / "ok", root / "ok" / ".." / ".." / "x.wav")


def test_a_path_longer_than_its_column_is_named(tmp_path: Path) -> None:
    """Recordings are stored by absolute path (1024 characters); a deeper one is a bad file,
    not a database error in the middle of the write. (SigMF: libsndfile itself refuses such
    WAV paths.)"""
    root = tmp_path.joinpath(*["d" * 200] * 5)
    write_sigmf(root / "ok" / "deep.sigmf-meta", np.zeros(100), RATE, "rf32_le")
    scan = scan_import_dir(root, "deep")
    assert [str(b) for b in scan.bad] == [
        "ok/deep.sigmf-meta: its absolute path is longer than 1024 characters"
    ]

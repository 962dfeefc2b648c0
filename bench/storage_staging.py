"""A 1,000-recording dataset, local (`file://`) vs S3 (moto's server on this machine): how long
`heimdall data import` takes to check and store it, and how long a worker takes to stage it
before its first epoch can start (cold: empty cache; warm: cached and verified earlier).

    .venv/bin/python bench/storage_staging.py [--recordings 1000] [--runs 3]

Import is the CLI's own work minus the database rows (the same COPY either way): every file
checked and hashed (`scan_import_dir`), then stored (`upload_recordings`). Staging is the
worker's `DatasetCache.prepare`, which is all that differs between the stores before training
starts. moto runs in Python on the same cores, so S3 figures are an upper bound for a real store
on a LAN.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from _machine import describe  # noqa: E402
from support import synthetic_recordings  # noqa: E402
from support.s3 import KEY_ID, REGION, SECRET, moto_server  # noqa: E402

from services.worker.cache import DatasetCache  # noqa: E402
from shared.datasets import Recording  # noqa: E402
from shared.importer import scan_import_dir  # noqa: E402
from shared.recording_files import upload_recordings  # noqa: E402
from shared.storage import BlobStore, StorageConfig  # noqa: E402

BUCKET = "bench"


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def one_run(config: StorageConfig, src: Path, work: Path) -> dict[str, float]:
    store = BlobStore(config)
    stored: list[Recording] = []

    def do_import() -> None:
        scan = scan_import_dir(src, "bench")
        stored.extend(upload_recordings(store, "bench", scan.recordings))

    out = {"import": timed(do_import)}
    cache = DatasetCache(store, work / f"cache-{uuid.uuid4().hex}", 10 << 30)
    out["stage cold"] = timed(lambda: cache.prepare("bench", stored))
    out["stage warm"] = timed(lambda: cache.prepare("bench", stored))
    return out


def report(name: str, runs: list[dict[str, float]]) -> None:
    cells = [f"{k} {statistics.median(r[k] for r in runs):6.2f} s" for k in runs[0]]
    print(f"{name:6s} " + "   ".join(cells) + f"   (median of {len(runs)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    with tempfile.TemporaryDirectory() as tmp, moto_server(Path(tmp) / "moto.log") as server:
        work = Path(tmp)
        server.create_bucket(BUCKET)
        src = work / "recordings"
        recs = synthetic_recordings(src, args.recordings, seed=1)
        size = sum(Path(r.path).stat().st_size for r in recs)
        print(f"dataset: {len(recs)} WAV recordings of 0.25 s, {size / 1e6:.1f} MB")
        local, remote = [], []
        for run in range(args.runs):
            local.append(one_run(StorageConfig((work / f"blobs-{run}").as_uri()), src, work))
            s3 = StorageConfig(f"s3://{BUCKET}/run-{run}", KEY_ID, SECRET, REGION, server.endpoint)
            remote.append(one_run(s3, src, work))
        report("file", local)
        report("s3", remote)


if __name__ == "__main__":
    main()

"""obstore vs s3fs: upload and download of one large object (a 100 MB checkpoint by default)
against moto's standalone S3 server on this machine, each library through its plain API
(obstore `put`/`get` of a file; s3fs `put_file`/`get_file`). Prints medians and the machine.

    .venv/bin/python bench/blob_libraries.py [--mb 100] [--runs 5]

Both talk to the same server over loopback, so the figures compare the clients' own cost (and
moto's, which is the same for both), not a network.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from _machine import describe  # noqa: E402
from support.s3 import KEY_ID, REGION, SECRET, moto_server  # noqa: E402

BUCKET = "bench"


def obstore_ops(endpoint: str) -> tuple[Callable[[Path, str], None], Callable[[str, Path], None]]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=endpoint,
        region=REGION,
        access_key_id=KEY_ID,
        secret_access_key=SECRET,
        client_options={"allow_http": True},
    )

    def up(src: Path, key: str) -> None:
        obstore.put(store, key, src)

    def down(key: str, dest: Path) -> None:
        with dest.open("wb") as out:
            for chunk in obstore.get(store, key).stream(min_chunk_size=8 << 20):
                out.write(chunk)

    return up, down


def s3fs_ops(endpoint: str) -> tuple[Callable[[Path, str], None], Callable[[str, Path], None]]:
    import s3fs

    fs = s3fs.S3FileSystem(
        key=KEY_ID,
        secret=SECRET,
        endpoint_url=endpoint,
        client_kwargs={"region_name": REGION},
        use_listings_cache=False,
    )

    def up(src: Path, key: str) -> None:
        fs.put_file(str(src), f"{BUCKET}/{key}")

    def down(key: str, dest: Path) -> None:
        fs.get_file(f"{BUCKET}/{key}", str(dest))

    return up, down


def measure(name: str, ops: tuple[Callable[..., None], Callable[..., None]], src: Path,
            runs: int, mb: int) -> None:  # fmt: skip
    up, down = ops
    ups, downs = [], []
    dest = src.with_name(f"{name}.out")
    for run in range(runs + 1):
        key = f"{name}/{run}.pt"
        t0 = time.perf_counter()
        up(src, key)
        t1 = time.perf_counter()
        down(key, dest)
        t2 = time.perf_counter()
        assert dest.stat().st_size == src.stat().st_size
        if run:  # the first run warms connections and moto
            ups.append(t1 - t0)
            downs.append(t2 - t1)
    up_s, down_s = statistics.median(ups), statistics.median(downs)
    print(
        f"{name:8s} upload {up_s:6.2f} s ({mb / up_s:6.0f} MB/s)"
        f"   download {down_s:6.2f} s ({mb / down_s:6.0f} MB/s)   median of {runs}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    with tempfile.TemporaryDirectory() as tmp, moto_server(Path(tmp) / "moto.log") as server:
        server.create_bucket(BUCKET)
        src = Path(tmp) / "checkpoint.pt"
        src.write_bytes(os.urandom(args.mb << 20))
        print(f"object: {args.mb} MB of random bytes, moto {server.endpoint}")
        measure("obstore", obstore_ops(server.endpoint), src, args.runs, args.mb)
        measure("s3fs", s3fs_ops(server.endpoint), src, args.runs, args.mb)


if __name__ == "__main__":
    main()

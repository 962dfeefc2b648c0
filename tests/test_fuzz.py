"""Schemathesis against the live API's own OpenAPI schema: no generated request gets a 500; and
the hostile requests it does not generate (deep JSON, overflowing numbers and ids, foreign
content types, uploaded files, WebSocket junk), each with the answer it must get; and recording
files whose headers lie, each refused by `heimdall data import` with its reason."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets
from support.cli import heimdall, run_heimdall, service_env
from support.recordings import complex_tone, raw_wav

from shared.db import connect, migrate
from shared.importer import scan_import_dir
from shared.net import free_port
from shared.settings import Settings
from shared.sigmfio import write_sigmf


async def _fresh_database(admin_url: str) -> str:
    name = f"heimdall_fuzz_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    head, _, query = admin_url.partition("?")
    url = head.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")
    conn = await connect(url)
    try:
        await migrate(conn)
        await conn.execute("INSERT INTO datasets (name) VALUES ('default')")
    finally:
        await conn.close()
    return url


@pytest.fixture(scope="module")
def api_url(store_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis_url, admin_url = store_urls
    database_url = asyncio.run(_fresh_database(admin_url))
    port = free_port()
    data_dir = tmp_path_factory.mktemp("fuzz")
    settings = Settings(redis_url=redis_url, database_url=database_url, data_dir=data_dir)
    env = service_env(settings, HEIMDALL_PORT=str(port), HEIMDALL_LOG_LEVEL="WARNING")
    log = data_dir / "api.log"
    base = f"http://127.0.0.1:{port}"
    with heimdall("api", env=env, log=log) as proc:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield base
    assert "unhandled error" not in log.read_text(), log.read_text()


def test_no_generated_request_gets_a_server_error(api_url: str, tmp_path: Path) -> None:
    """A bounded, seeded schemathesis run over every operation of the API's own schema."""
    report = tmp_path / "fuzz.xml"
    # A real job and dataset, so the operations under /jobs/{job_id} and /datasets/{name} get
    # past their 404 and their query parameters are fuzzed too.
    job = httpx.post(
        f"{api_url}/api/v1/training/jobs", json={"job_name": "fuzz", "config": {"epochs": 3}}
    ).json()["id"]
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.job_id" = "{job}"\n"path.name" = "default"\n')
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(config),
            "run",
            f"{api_url}/schema/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    # The real ids were used: the query-heavy operations got past their 404. (Artifacts 404 as
    # the job has none; pause/resume may run after the fuzzed DELETE removed the job.)
    for path in ("{job_id}/metrics", "{job_id}/events", "/datasets/{name}"):
        assert f"{path}\n" not in done.stdout.split("Missing test data")[-1], done.stdout[-3000:]
    assert "testcase" in report.read_text()  # it really ran operations


# What schemathesis does not generate: depth, overflow, content types, files. Each probe is a
# raw request against the real server (uvicorn in a subprocess) with the status it must get and
# words its detail must hold; the fixture's teardown also fails on any "unhandled error" logged.
JOBS = "/api/v1/training/jobs"
JSON = "application/json"
DEEP = b"[" * 1000
HUGE = "9" * 25
MULTIPART = (
    b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.wav"\r\n\r\nRIFF\r\n--b--'
)


def _job_body(**fields: Any) -> bytes:
    return json.dumps({"job_name": "probe", "config": {"epochs": 1}, **fields}).encode()


class Probe(NamedTuple):
    name: str
    method: str
    path: str
    """`{job}` stands for a real job's URL."""
    status: int
    words: str = ""
    """Words the error's detail must hold."""
    body: bytes = b""
    content_type: str | None = JSON


PROBES = [
    # depth
    Probe("deep array", "POST", JOBS, 400, "nested deeper", DEEP),
    Probe("deep object", "POST", JOBS, 400, "nested deeper", b'{"a":' * 900 + b"1" + b"}" * 900),
    Probe("deep config", "POST", JOBS, 400, "nested", b'{"job_name":"x","config":' + DEEP),
    Probe("brackets in a string", "POST", JOBS, 201, "", _job_body(job_name="[{" * 100)),
    # overflow
    Probe("seed 10^25", "POST", JOBS, 400, "seed", _job_body(config={"seed": int(HUGE)})),
    Probe(
        "epochs 1e400",
        "POST",
        JOBS,
        400,
        "out of range",
        b'{"job_name":"x","config":{"epochs":1e400}}',
    ),
    Probe("limit 10^25", "GET", f"{JOBS}?limit={HUGE}", 400, "limit"),
    Probe("offset 10^25", "GET", f"{JOBS}?offset={HUGE}", 400, "offset"),
    Probe("after ms 10^20", "GET", "{job}/events?after=99999999999999999999-0", 400, "2^64"),
    Probe("after seq 10^20", "GET", "{job}/events?after=1-99999999999999999999", 400, "2^64"),
    Probe("after in Arabic digits", "GET", "{job}/events?after=%D9%A1-%D9%A2", 400, "event id"),
    Probe("after the largest id", "GET", f"{{job}}/events?after={2**64 - 1}-{2**64 - 1}", 200),
    Probe("after seq 2^64-1", "GET", f"{{job}}/events?after=1-{2**64 - 1}", 200),
    Probe("name of 2 MB", "POST", JOBS, 413, "", _job_body(job_name="x" * 2 * 10**6)),
    # content types
    Probe("text/plain form", "POST", JOBS, 415, "application/json", _job_body(), "text/plain"),
    Probe(
        "urlencoded form",
        "POST",
        JOBS,
        415,
        "json",
        b"job_name=x",
        "application/x-www-form-urlencoded",
    ),
    Probe("no content type", "POST", JOBS, 415, "none given", _job_body(), None),
    Probe("json; charset", "POST", JOBS, 201, "", _job_body(), "application/json; charset=utf-8"),
    Probe("text/plain cancel", "POST", "{job}/cancel", 415, "json", b"", "text/plain"),
    # files
    Probe(
        "multipart upload", "POST", JOBS, 415, "json", MULTIPART, "multipart/form-data; boundary=b"
    ),
    Probe("binary body", "POST", JOBS, 415, "json", b"\0" * 64, "application/octet-stream"),
    Probe("artifact traversal", "GET", "{job}/artifacts/..%2F..%2Fetc%2Fpasswd", 404),
    Probe("no artifact yet", "GET", "{job}/artifacts/checkpoint", 404, "no checkpoint"),
]


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_hostile_request(api_url: str, probe: Probe) -> None:
    url = api_url + probe.path.format(job=f"{JOBS}/{_probe_job(api_url)}")
    headers = {"content-type": probe.content_type} if probe.content_type else {}
    resp = httpx.request(probe.method, url, headers=headers, content=probe.body, timeout=30)
    assert resp.status_code == probe.status, resp.text[:500]
    detail = resp.json().get("detail", "") if probe.status >= 400 else ""
    assert probe.words.lower() in detail.lower(), detail
    for leak in ("query argument", "asyncpg", "Traceback", "Invalid stream ID"):
        assert leak not in resp.text


_jobs: dict[str, str] = {}


def _probe_job(api_url: str) -> str:
    """One job for the probes under /jobs/{id} (made once per server)."""
    if api_url not in _jobs:
        resp = httpx.post(f"{api_url}{JOBS}", json={"job_name": "probes", "config": {"epochs": 1}})
        _jobs[api_url] = resp.json()["id"]
    return _jobs[api_url]


async def test_hostile_websocket_messages(api_url: str) -> None:
    """A message nested 1100 deep, binary junk, and overflowing `?after=` ids."""
    job = _probe_job(api_url)
    base = api_url.replace("http", "ws", 1) + f"/ws/training/{job}"
    async with websockets.connect(base) as ws:
        assert json.loads(await ws.recv())["event"] == "connected"
        for junk, words in [
            ("[" * 1100, "nested deeper"),
            ('{"event":' * 1100, "nested deeper"),
            (b"\xff\xfe", "malformed"),
            ("null", "unknown message"),
        ]:
            await ws.send(junk)
            assert words in (await _next_of(ws, "error"))["message"]
        await ws.send('{"event": "ping"}')
        assert (await _next_of(ws, "pong"))["event"] == "pong"  # still up
    for after in ["99999999999999999999-0", "1-99999999999999999999", "x"]:
        async with websockets.connect(f"{base}?after={after}") as ws:
            error = await _next_of(ws, "error")
            assert "event id" in json.dumps(error)
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
            assert ws.close_code == 4400 and "event id" in (ws.close_reason or "")


async def _next_of(ws: Any, event: str) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message.get("event") == event:
            return message  # type: ignore[no-any-return]


# Files whose headers lie, or that say something an import must refuse: each is written by the
# probe, scanned beside one good file, and must be named with the words of its reason while the
# good file still imports; then all of them at once through `heimdall data import`.
RATE = 8000


def _patch(path: Path, chunk: bytes, offset: int, value: bytes) -> None:
    """Overwrite bytes `offset` bytes after the first `chunk` id of a file raw_wav wrote."""
    data = bytearray(path.read_bytes())
    at = data.index(chunk) + offset
    data[at : at + len(value)] = value
    path.write_bytes(bytes(data))


def _wav_lie(chunk: bytes, offset: int, value: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        raw_wav(path, frames=10)
        _patch(path, chunk, offset, value)

    return write


def _floats(*values: float) -> Callable[[Path], None]:
    return lambda path: sf.write(str(path), np.array(values, np.float32), RATE, subtype="FLOAT")


def _sigmf(top: dict[str, Any] | None = None, **glob: Any) -> Callable[[Path], None]:
    """A good cf32_le pair whose metadata then gets `top`-level keys and `core:` keys."""

    def write(path: Path) -> None:
        write_sigmf(path, complex_tone(0, RATE, 20, np.random.default_rng(0)), RATE)
        meta = json.loads(path.read_text())
        meta["global"].update({f"core:{k}": v for k, v in glob.items()})
        meta.update(top or {})
        path.write_text(json.dumps(meta))

    return write


class FileProbe(NamedTuple):
    name: str
    """The file's name in the class folder (`.wav` or `.sigmf-meta`)."""
    write: Callable[[Path], object]
    words: str
    """Words its reason must hold."""


FILE_PROBES = [
    # WAV headers
    FileProbe("zero_channels.wav", lambda p: raw_wav(p, channels=0), "0 channels"),
    FileProbe("channels_65535.wav", lambda p: raw_wav(p, channels=65535), "65535 channels"),
    FileProbe("rate_2e32.wav", lambda p: raw_wav(p, rate=2**32 - 1), "4294967295 Hz is outside"),
    FileProbe("rate_zero.wav", lambda p: raw_wav(p, rate=0), "sample rate 0 Hz"),
    FileProbe("data_cut.wav", lambda p: raw_wav(p, frames=100, cut=51), "truncated"),
    FileProbe("data_claims_4gib.wav", _wav_lie(b"data", 4, b"\xf0\xff\xff\xff"), "truncated"),
    FileProbe("fmt_claims_4gib.wav", _wav_lie(b"fmt ", 4, b"\xf0\xff\xff\xff"), "fmt"),
    FileProbe("bits_zero.wav", _wav_lie(b"fmt ", 22, b"\0\0"), "not a readable WAV"),
    FileProbe("no_data_chunk.wav", lambda p: p.write_bytes(b"RIFF\4\0\0\0WAVE"), "data"),
    FileProbe(
        "junk_chunks.wav",
        lambda p: p.write_bytes(b"RIFF\x04\x71\x02\0WAVE" + b"junk\0\0\0\0" * 20_000),
        "not a readable WAV",
    ),
    FileProbe("empty.wav", lambda p: p.write_bytes(b""), "not a readable WAV"),
    FileProbe("nan.wav", _floats(0.1, float("nan"), 0.2), "non-finite"),
    FileProbe("inf.wav", _floats(0.1, float("inf")), "non-finite"),
    # SigMF metadata
    FileProbe("rate_1e300.sigmf-meta", _sigmf(sample_rate=1e300), "1e+300 Hz is outside"),
    FileProbe("rate_negative.sigmf-meta", _sigmf(sample_rate=-8000), "-8000 Hz is outside"),
    FileProbe("rate_text.sigmf-meta", _sigmf(sample_rate="8000"), "is not a number"),
    FileProbe("rate_fraction.sigmf-meta", _sigmf(sample_rate=8000.5), "whole number"),
    FileProbe("two_channels.sigmf-meta", _sigmf(num_channels=2), "num_channels 2"),
    FileProbe("data_elsewhere.sigmf-meta", _sigmf(dataset="../x.sigmf-data"), "beside the meta"),
    FileProbe("annotations_int.sigmf-meta", _sigmf({"annotations": 5}), "'annotations'"),
    FileProbe("annotations_text.sigmf-meta", _sigmf({"annotations": "x"}), "'annotations'"),
    FileProbe("captures_object.sigmf-meta", _sigmf({"captures": {}}), "'captures'"),
    FileProbe(
        "header_1e30.sigmf-meta",
        _sigmf({"captures": [{"core:header_bytes": 10**30}]}),
        "shorter than its",
    ),
    FileProbe("snr_text.sigmf-meta", _sigmf({"annotations": [{"x:snr_db": "loud"}]}), "snr_db"),
    FileProbe("global_list.sigmf-meta", _sigmf({"global": []}), "no 'global' object"),
    FileProbe("deep.sigmf-meta", lambda p: p.write_text("[" * 100_000), "not readable JSON"),
    FileProbe("not_utf8.sigmf-meta", lambda p: p.write_bytes(b"\xff\xfe\0"), "not readable"),
    FileProbe(
        "no_data_file.sigmf-meta",
        lambda p: p.write_text('{"global": {"core:datatype": "cf32_le", "core:sample_rate": 8}}'),
        "is missing",
    ),
]


def _write_probe(root: Path, probe: FileProbe) -> str:
    path = root / "bad" / probe.name
    path.parent.mkdir(parents=True, exist_ok=True)
    probe.write(path)
    return f"bad/{probe.name}"


def _good(root: Path) -> None:
    raw_wav(root / "ok" / "good.wav", frames=400)


@pytest.mark.parametrize("probe", FILE_PROBES, ids=[p.name for p in FILE_PROBES])
def test_hostile_recording_file(tmp_path: Path, probe: FileProbe) -> None:
    _good(tmp_path)
    name = _write_probe(tmp_path, probe)
    scan = scan_import_dir(tmp_path, "hostile")
    reasons = {bad.name: bad.reason for bad in scan.bad}
    assert list(reasons) == [name], reasons
    assert probe.words in reasons[name], reasons[name]
    assert [Path(r.path).name for r in scan.recordings] == ["good.wav"]


async def test_hostile_files_through_data_import(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Every probe at once, as a user runs the import: each file named, no traceback, nothing
    written; `--skip-bad` imports the good file alone."""
    _good(tmp_path)
    names = [_write_probe(tmp_path, probe) for probe in FILE_PROBES]
    done = run_heimdall(settings, "data", "import", str(tmp_path), "--dataset", "hostile")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for name in names:
        assert f"{name}: " in done.stderr, (name, done.stderr[-3000:])
    assert await db.fetchval("SELECT count(*) FROM recordings") == 0
    done = run_heimdall(
        settings, "data", "import", str(tmp_path), "--dataset", "hostile", "--skip-bad"
    )
    assert done.returncode == 0 and "imported 1 recordings" in done.stdout, done.stderr[-3000:]
    assert await db.fetchval("SELECT count(*) FROM recordings") == 1

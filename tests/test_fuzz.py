"""Schemathesis against the live API's own OpenAPI schema: no generated request gets a 500."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.db import connect, migrate
from shared.net import free_port


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    env.update(
        HEIMDALL_REDIS_URL=redis_url,
        HEIMDALL_DATABASE_URL=database_url,
        HEIMDALL_DATA_DIR=str(tmp_path_factory.mktemp("fuzz")),
        HEIMDALL_PORT=str(port),
        HEIMDALL_LOG_LEVEL="WARNING",
    )
    log = Path(env["HEIMDALL_DATA_DIR"]) / "api.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "api"], env=env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
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
    finally:
        proc.terminate()
        proc.wait(10)
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

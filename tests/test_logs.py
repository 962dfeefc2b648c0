"""With HEIMDALL_LOG_JSON=1 every line a process writes is JSON: our structlog events and the
libraries' stdlib records alike (uvicorn, arq, asyncio), tracebacks included. Real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import wait_for
from support.cli import REPO, heimdall, service_env

from shared.net import free_port
from shared.settings import Settings

pytestmark = pytest.mark.slow


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as JSON; a line that is not fails the test, showing itself."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON line: {line!r}\n--- whole log ---\n{text}")
    return lines


def test_asyncio_and_stdlib_records_with_tracebacks_are_json() -> None:
    code = """
import asyncio, gc, logging
from shared.logs import configure_logging
configure_logging("INFO", json=True)
logging.getLogger("arq.worker").info("plain %s record", "stdlib")
async def boom():
    raise RuntimeError("lost task")
async def main():
    task = asyncio.ensure_future(boom())
    await asyncio.sleep(0.01)
    del task
    gc.collect()  # asyncio logs "Task exception was never retrieved" with the traceback
asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = _json_lines(out.stderr)
    plain = next(line for line in lines if line["logger"] == "arq.worker")
    assert plain["event"] == "plain stdlib record" and plain["level"] == "info"
    assert plain["timestamp"].endswith("Z")
    lost = next(line for line in lines if line["logger"] == "asyncio")
    assert lost["level"] == "error" and "Task exception was never retrieved" in lost["event"]
    assert "RuntimeError: lost task" in lost["exception"]


async def _healthy(client: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "the API exited"
    try:
        return (await client.get("/health")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_api_lines_are_json(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = service_env(settings, HEIMDALL_LOG_JSON="1", HEIMDALL_PORT=str(port))
    log = tmp_path / "api.log"
    with heimdall("api", env=env, log=log) as proc:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            await wait_for(lambda: _healthy(client, proc), timeout=60, what="the API")
            created = await client.post("/api/v1/training/jobs", json={"job_name": "logged"})
            assert created.status_code == 201, created.text
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")  # uvicorn warns "Invalid HTTP request"
        await reader.read(1024)
        writer.close()
        await wait_for(lambda: "Invalid HTTP" in log.read_text(), what="uvicorn's warning")
    lines = _json_lines(log.read_text())
    assert any(line.get("logger", "").startswith("uvicorn") for line in lines), lines
    assert any(line["event"] == "job created" for line in lines), lines


async def test_worker_lines_are_json(settings: Settings, tmp_path: Path) -> None:
    env = service_env(settings, HEIMDALL_LOG_JSON="1")
    log = tmp_path / "worker.log"
    with heimdall("worker", "--burst", env=env, log=log) as proc:
        assert await asyncio.to_thread(proc.wait, 120) == 0, log.read_text()
    lines = _json_lines(log.read_text())
    assert any(line.get("logger") == "arq.worker" for line in lines), lines
    assert any(line["event"] == "worker ready" for line in lines), lines

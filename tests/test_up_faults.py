"""`heimdall up` under faults, as issue 12 found them: real process trees, kill -9, SIGSTOP.

- kill -9 of each child (recorder, API, worker, Valkey, PostgreSQL) is logged and followed by a
  restart; a job submitted afterwards completes with every epoch exactly once (defect 3).
- While the database is down every route answers 200 or 503, never 500 (defect 4).
- Redis stalled past the worker's lease, twice, with `HEIMDALL_MAX_RECOVERIES=1`: the job
  ends `completed` with every epoch once (defect 5); `/ready` answers 503 within 4 s during a
  stall and `POST /jobs` a 503 too, instead of hanging (defect 6).
- `up` started with SIGINT ignored (as from a non-interactive shell) stops on SIGINT, and no
  process of its tree outlives it (defects 3 and 9).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import wait_until
from support.processes import Up, cli_env
from support.worker import SMALL

from shared.net import free_port
from shared.status import TERMINAL as FINISHED

pytestmark = [pytest.mark.slow]

JOBS = "/api/v1/training/jobs"
CHILDREN = ("recorder", "api", "worker", "valkey", "postgres")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's basetemp (see test_cli.py): the embedded PostgreSQL may run as its own
    # user.
    root = Path(tempfile.mkdtemp(prefix="heimdall-faults-"))
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)


def get(url: str, timeout: float = 10.0) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None


def ready(up: Up) -> bool:
    resp = get(f"{up.base}/ready", timeout=5)
    return resp is not None and resp.status_code == 200


def synth(data_dir: Path) -> None:
    """The `synth` dataset of `support.worker.SMALL`, written while `up` runs."""
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "data", "synth", "--dataset", "synth",
         "--samples", "84", "--seed", "1", "--duration", "0.25", "--data-dir", str(data_dir)],
        env=cli_env(), capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def submit(up: Up, epochs: int) -> str:
    resp = httpx.post(
        f"{up.base}{JOBS}",
        json={"job_name": "faults", "config": {**SMALL, "epochs": epochs}},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def job(up: Up, job_id: str) -> dict[str, Any] | None:
    resp = get(f"{up.base}{JOBS}/{job_id}")
    return resp.json()["job"] if resp is not None and resp.status_code == 200 else None


def finished(up: Up, job_id: str) -> dict[str, Any] | None:
    now = job(up, job_id)
    return now if now and now["status"] in ("completed", "failed", "cancelled") else None


def epochs_logged(up: Up, job_id: str) -> list[int]:
    """The epochs of the job's event log, in order (every `epoch_completed` the recorder kept)."""
    out: list[int] = []
    after = None
    while True:
        params = {"limit": "1000", **({"after": after} if after else {})}
        resp = httpx.get(f"{up.base}{JOBS}/{job_id}/events", params=params, timeout=30)
        assert resp.status_code == 200, resp.text
        page = resp.json()["events"]
        out += [e["event"]["epoch"] for e in page if e["event"]["type"] == "epoch_completed"]
        if len(page) < 1000:
            return out
        after = page[-1]["event_id"]


def assert_completed_once(up: Up, job_id: str, epochs: int, timeout: float = 300) -> None:
    done = wait_until(
        lambda: finished(up, job_id), timeout=timeout, what="the job to finish", step=0.5
    )
    assert done["status"] == "completed", (done["error_message"], up.output()[-3000:])
    wait_until(
        lambda: len(epochs_logged(up, job_id)) >= epochs, timeout=30, what="every epoch logged"
    )
    assert epochs_logged(up, job_id) == list(range(1, epochs + 1))
    metrics = httpx.get(f"{up.base}{JOBS}/{job_id}/metrics", timeout=30).json()["metrics"]
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))


def stop_cleanly(up: Up) -> None:
    """SIGINT stops the whole tree (even with SIGINT inherited as ignored), nothing left."""
    code = up.stop(signal.SIGINT, timeout=90)
    assert code == 0, up.output()[-3000:]
    assert up.alive() == [], up.alive()


def test_kill_9_of_every_child_is_restarted_and_the_system_still_trains(data_dir: Path) -> None:
    up = Up(data_dir, free_port(), "--workers", "1", ignore_sigint=True)
    try:
        up.wait_ready()
        synth(data_dir)
        for name in CHILDREN:
            pid = up.service_pid(name)
            assert pid is not None, (name, up.output()[-3000:])
            os.kill(pid, signal.SIGKILL)
            codes: set[int] = set()
            if name == "postgres":
                # Until it is back, every route is 503 (or still 200), never 500.
                def back(codes: set[int] = codes) -> bool:
                    for path in (JOBS, "/api/v1/datasets", "/ready"):
                        resp = get(f"{up.base}{path}", timeout=10)
                        if resp is not None:
                            codes.add(resp.status_code)
                            if resp.status_code == 503:
                                assert "database" in resp.text.lower(), resp.text
                    return 503 not in codes or ready(up)

                wait_until(back, timeout=60, what="the database outage to show and pass", step=0.02)
                assert codes <= {200, 503} and 503 in codes, codes
            wait_until(
                lambda name=name, pid=pid: up.service_pid(name) not in (None, pid),  # type: ignore[misc]
                timeout=60,
                what=f"{name} to be restarted",
            )
            wait_until(lambda: ready(up), timeout=60, what=f"ready again after {name}")
            assert f"service={name}" in up.output()
        log = up.output()
        assert log.count("restarted") >= len(CHILDREN), log[-3000:]
        job_id = submit(up, epochs=2)
        assert_completed_once(up, job_id, 2)
    finally:
        stop_cleanly(up)


def test_redis_stalls_past_the_lease_do_not_fail_a_healthy_job(data_dir: Path) -> None:
    env = cli_env(HEIMDALL_MAX_RECOVERIES="1")
    up = Up(data_dir, free_port(), "--workers", "1", env=env)
    valkey: int | None = None
    try:
        up.wait_ready()
        synth(data_dir)
        valkey = up.service_pid("valkey")
        assert valkey is not None
        epochs = 12
        job_id = submit(up, epochs=epochs)
        seen = 0
        for stall in (1, 2):
            # Each stall starts once the job has trained an epoch more than before.
            def progressed(seen: int = seen) -> int:
                now = job(up, job_id)
                assert now is None or now["status"] not in FINISHED, ("before the stall", now)
                return int(now["current_epoch"]) if now and now["current_epoch"] > seen else 0

            seen = wait_until(
                progressed, timeout=240, what=f"an epoch before stall {stall}", step=0.2
            )
            os.kill(valkey, signal.SIGSTOP)
            try:
                stalled_at = time.monotonic()
                resp = get(f"{up.base}/ready", timeout=4)
                assert resp is not None, "/ready did not answer within 4 s during a stall"
                assert resp.status_code == 503, resp.text
                created = httpx.post(
                    f"{up.base}{JOBS}",
                    json={"job_name": "stalled", "config": {**SMALL, "epochs": 1}},
                    timeout=10,
                )
                assert created.status_code == 503, created.text
                # The fault itself lasts past the 10 s lease and a reapers' sweep (this waits for
                # no condition: it is the length of the outage).
                time.sleep(max(0.0, 13.0 - (time.monotonic() - stalled_at)))
            finally:
                os.kill(valkey, signal.SIGCONT)
            wait_until(lambda: ready(up), timeout=60, what=f"ready after stall {stall}")
        assert_completed_once(up, job_id, epochs, timeout=400)
        assert "was lost" not in up.output()
    finally:
        if valkey is not None:
            with_suppressed_kill(valkey, signal.SIGCONT)
        up.stop()


def with_suppressed_kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

"""A real S3 protocol server for tests and benchmarks: moto's standalone server (what s3fs and
obstore test against) in its own process on a free port, killed when the block ends."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.net import free_port
from shared.settings import Settings

BUCKET = "heimdall-tests"
"""The bucket the tests' server is started with; each test takes its own prefix of it."""

REGION = "us-east-1"
KEY_ID = "testing"
SECRET = "testing"


@dataclass(frozen=True)
class S3Server:
    """Where the server listens and the credentials it accepts (moto accepts any)."""

    endpoint: str

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a process at this server."""
        return {
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def settings(self, base: Settings) -> Settings:
        """`base` pointed at a fresh prefix of the tests' bucket on this server."""
        env = self.env()
        return dataclasses.replace(
            base,
            storage_url=f"s3://{BUCKET}/{uuid.uuid4().hex}",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            aws_region=env["AWS_REGION"],
            aws_endpoint_url=env["AWS_ENDPOINT_URL"],
        )

    def create_bucket(self, name: str) -> None:
        # boto3 comes with moto; Heimdall itself never creates buckets.
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
        )
        client.create_bucket(Bucket=name)
        client.close()


def _wait_listening(proc: subprocess.Popen[bytes], endpoint: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise RuntimeError(f"moto server not listening on {endpoint} after {timeout} s")


@contextlib.contextmanager
def moto_server(log: Path, timeout: float = 60.0) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 and a free port; its output goes to `log`."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_listening(proc, endpoint, timeout)
            yield S3Server(endpoint)
        finally:
            proc.kill()
            proc.wait(10)

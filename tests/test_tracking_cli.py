"""`heimdall tensorboard`: a real TensorBoard serves every job's folder as its own run."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from services.cli.tensorboard import start_tensorboard, stop_tensorboard, tensorboard_command
from services.tracking.settings import tensorboard_dir, tensorboard_root
from shared.events import EpochCompleted
from shared.net import free_port
from shared.settings import Settings

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")


def test_command_serves_the_data_dirs_tensorboard_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    command = tensorboard_command(settings, 7007, "0.0.0.0")
    assert command[command.index("--logdir") + 1] == str(tmp_path / "tensorboard")
    assert command[command.index("--port") + 1] == "7007"
    assert command[command.index("--host") + 1] == "0.0.0.0"


@pytest.mark.slow
def test_tensorboard_lists_each_job_as_a_run(tmp_path: Path) -> None:
    from services.tracking.tensorboard import TensorBoardSink

    settings = Settings(data_dir=tmp_path)
    for job_id in ("job-a", "job-b"):
        sink = TensorBoardSink(tensorboard_dir(settings, job_id))
        epoch = EpochCompleted(
            job_id=job_id,
            epoch=1,
            total_epochs=1,
            train_loss=1.0,
            val_loss=1.1,
            train_accuracy=0.5,
            val_accuracy=0.4,
            learning_rate=0.01,
        )
        sink.write([epoch])
        sink.close()
    assert sorted(p.name for p in tensorboard_root(settings).iterdir()) == ["job-a", "job-b"]

    port = free_port()
    process = start_tensorboard(settings, port, "127.0.0.1")
    try:
        deadline = time.monotonic() + 90
        tags: dict[str, object] = {}
        while time.monotonic() < deadline and sorted(tags) != ["job-a", "job-b"]:
            assert process.poll() is None, "tensorboard exited"
            try:
                url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
                tags = httpx.get(url, timeout=2).json()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert sorted(tags) == ["job-a", "job-b"]
        assert "train_loss" in tags["job-a"]  # type: ignore[operator]
    finally:
        stop_tensorboard(process)
    assert process.returncode is not None

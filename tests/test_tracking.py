"""Tracking (issue 9): a job's events, followed from its stream into TensorBoard and MLflow.

Each test emits a small but realistic job (3 epochs of 4 batches) through the real emitter and
real Valkey, runs `track_job` on it, and reads the results back with the trackers' own readers.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from services.tracking import JobTrackers, TrackingSettings, delete_tracking, track_job
from services.tracking.evaluation import evaluation_document
from services.tracking.export import StoreExport, pull_tensorboard
from services.tracking.settings import state_path, tensorboard_dir, tensorboard_root
from services.tracking.tensorboard import EPOCH_METRICS
from shared import keys
from shared.commands import DeleteJob
from shared.emit import AsyncEmitter
from shared.events import (
    AnyEvent,
    BatchPoint,
    BatchProgress,
    CheckpointSaved,
    ClassMetrics,
    EpochCompleted,
    EvaluationCompleted,
    JobCompleted,
    JobQueued,
    JobStarted,
    JobWarning,
    TrackingLinked,
    decode_event,
    parse_event_id,
)
from shared.settings import Settings
from shared.storage import (
    BlobStore,
    StorageConfig,
    job_key,
    job_prefixes,
    open_store,
    tensorboard_key,
)

tensorboard = pytest.importorskip(
    "tensorboard",
    reason="the tensorboard extra is not installed (pip install heimdall[tensorboard])",
)

EPOCHS = 3
BATCHES = 4
CONFIG: dict[str, Any] = {
    "model_architecture": "convnext_atto",
    "epochs": EPOCHS,
    "batch_size": 8,
    "learning_rate": 0.001,
    "dataset": "default",
    "seed": 7,
    "augment": None,
}


def epoch_event(job_id: str, epoch: int) -> EpochCompleted:
    return EpochCompleted(
        job_id=job_id,
        epoch=epoch,
        total_epochs=EPOCHS,
        train_loss=2.0 / epoch,
        val_loss=2.5 / epoch,
        train_accuracy=0.2 * epoch,
        val_accuracy=0.15 * epoch,
        learning_rate=0.001 / epoch,
        gradient_norm=1.5 + epoch,
        epoch_time_s=3.0 + epoch,
    )


def batch_point(epoch: int, batch: int) -> BatchPoint:
    return BatchPoint(
        epoch=epoch,
        batch=batch,
        loss=3.0 - epoch * 0.5 - batch * 0.01,
        accuracy=0.1 * epoch,
        learning_rate=0.001,
        gradient_norm=None if batch == 1 else 2.0,
        ts=time.time(),
    )


EVAL_CLASSES = ["am", "fm"]


def evaluation_event(job_id: str, phase: str, epoch: int) -> EvaluationCompleted:
    """A two-class evaluation whose numbers depend on the phase and epoch."""
    f1 = 0.5 + 0.1 * epoch + (0.05 if phase == "test" else 0.0)
    return EvaluationCompleted(
        job_id=job_id,
        phase=phase,
        epoch=epoch,
        classes=EVAL_CLASSES,
        confusion_matrix=[[epoch, 1], [0, 2]],
        per_class={
            c: ClassMetrics(precision=f1, recall=f1 - 0.01 * i, f1=f1 - 0.02 * i, support=3)
            for i, c in enumerate(EVAL_CLASSES)
        },
        accuracy=f1,
        macro_f1=f1 - 0.01,
        loss=1.0 / epoch,
        samples=epoch + 3,
    )


async def emit_job(
    settings: Settings,
    client: aredis.Redis,
    job_id: str,
    epochs: range = range(1, EPOCHS + 1),
    *,
    finish: bool = True,
) -> str:
    """A job's events as a worker emits them (the whole job by default); returns the id of
    the last event."""
    emitter = AsyncEmitter(client)
    out_dir = settings.artifacts_dir / job_id
    out_dir.mkdir(parents=True, exist_ok=True)
    if epochs.start == 1:
        await emitter.emit(JobQueued(job_id=job_id, task_id="t", total_epochs=EPOCHS))
    last = await emitter.emit(
        JobStarted(job_id=job_id, total_batches=BATCHES, num_classes=4, start_epoch=epochs.start)
    )
    for epoch in epochs:
        for first in (1, 3):
            points = [batch_point(epoch, b) for b in (first, first + 1)]
            await emitter.emit(
                BatchProgress(
                    job_id=job_id,
                    epoch=epoch,
                    batch=first + 1,
                    total_batches=BATCHES,
                    points=points,
                )
            )
        await emitter.emit(epoch_event(job_id, epoch))
        await emitter.emit(evaluation_event(job_id, "val", epoch))
        path = str(out_dir / "best.pt")
        last = await emitter.emit(CheckpointSaved(job_id=job_id, epoch=epoch, path=path))
    if finish:
        await emitter.emit(evaluation_event(job_id, "test", 3))
        onnx = out_dir / "model.onnx"
        onnx.write_bytes(b"not really onnx, but a model file all the same")
        completed = JobCompleted(
            job_id=job_id, epochs_run=EPOCHS, onnx_model_path=str(onnx), best_epoch=3
        )
        last = await emitter.emit(completed)
    return last


async def stream_events(client: aredis.Redis, job_id: str) -> list[AnyEvent]:
    entries = await client.xrange(keys.job_stream(job_id))
    return [decode_event(fields[b"data"]) for _, fields in entries]


def read_scalars(folder: Path) -> dict[str, list[Any]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_epoch_scalars(scalars: dict[str, list[Any]], job_id: str) -> None:
    for name in EPOCH_METRICS:
        # A retried job writes a second event file; its name may sort first (TensorBoard
        # orders points by step), so the order across files is not the claim: one per epoch is.
        points = sorted(scalars[name], key=lambda p: p.step)
        assert [p.step for p in points] == list(range(1, EPOCHS + 1)), name
        expected = [getattr(epoch_event(job_id, e), name) for e in range(1, EPOCHS + 1)]
        assert [p.value for p in points] == pytest.approx(expected, rel=1e-6), name


async def test_tensorboard_has_one_point_per_epoch_and_every_batch(
    settings: Settings, redis_client: aredis.Redis
) -> None:
    job_id = "tb-job"
    # Tracking starts before the job emits anything and follows the stream live.
    task = asyncio.create_task(track_job(settings, redis_client, job_id, CONFIG, mlflow_uri=None))
    await emit_job(settings, redis_client, job_id)
    await asyncio.wait_for(task, timeout=30)

    scalars = read_scalars(tensorboard_dir(settings, job_id))
    assert_epoch_scalars(scalars, job_id)
    steps = list(range(1, EPOCHS * BATCHES + 1))
    for name in ("batch/loss", "batch/accuracy", "batch/learning_rate"):
        assert [p.step for p in scalars[name]] == steps, name
    # Batch 1 of each epoch had no gradient norm.
    assert len(scalars["batch/gradient_norm"]) == EPOCHS * (BATCHES - 1)
    assert scalars["batch/loss"][BATCHES].value == pytest.approx(batch_point(2, 1).loss)
    # Per-class scalars of every validation, and of the test set once.
    for phase, epochs in (("val", list(range(1, EPOCHS + 1))), ("test", [3])):
        for c in EVAL_CLASSES:
            points = scalars[f"{phase}_f1/{c}"]
            assert [p.step for p in points] == epochs, (phase, c)
            want = [evaluation_event(job_id, phase, e).per_class[c].f1 for e in epochs]
            assert [p.value for p in points] == pytest.approx(want)
        assert [p.step for p in scalars[f"{phase}_macro_f1"]] == epochs

    links = [e for e in await stream_events(redis_client, job_id) if isinstance(e, TrackingLinked)]
    assert len(links) == 1
    assert links[0].mlflow_run_id is None
    assert links[0].tensorboard_dir == str(tensorboard_dir(settings, job_id))


async def test_mlflow_file_store_run_has_params_metrics_and_model(
    settings: Settings, redis_client: aredis.Redis, tmp_path: Path
) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    job_id = "mlflow-job"
    uri = (tmp_path / "mlruns").as_uri()
    environment = dict(os.environ)
    await emit_job(settings, redis_client, job_id)
    await asyncio.wait_for(
        track_job(settings, redis_client, job_id, CONFIG, mlflow_uri=uri, tensorboard=False),
        timeout=120,
    )
    assert dict(os.environ) == environment, "MLflow's settings leaked into the environment"

    events = await stream_events(redis_client, job_id)
    assert not [e for e in events if isinstance(e, JobWarning)]
    (link,) = [e for e in events if isinstance(e, TrackingLinked)]
    assert link.mlflow_run_id and link.tensorboard_dir is None
    assert not tensorboard_dir(settings, job_id).exists()

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(link.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == job_id
    experiment = client.get_experiment_by_name("heimdall")
    assert experiment is not None and run.info.experiment_id == experiment.experiment_id
    assert run.data.params["model_architecture"] == "convnext_atto"
    assert run.data.params["epochs"] == str(EPOCHS)
    assert run.data.params["augment"] == "null"
    for name in EPOCH_METRICS:
        history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), name
        expected = [getattr(epoch_event(job_id, e), name) for e in range(1, EPOCHS + 1)]
        assert [m.value for m in history] == pytest.approx(expected), name
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "model")]
    assert artifacts == ["model/model.onnx"]
    # Evaluations: per-class metrics, and each confusion matrix as a JSON artifact.
    test_f1 = client.get_metric_history(run.info.run_id, "test_f1/fm")
    assert [(m.step, m.value) for m in test_f1] == [
        (3, pytest.approx(evaluation_event(job_id, "test", 3).per_class["fm"].f1))
    ]
    val_f1 = client.get_metric_history(run.info.run_id, "val_macro_f1")
    assert sorted(m.step for m in val_f1) == list(range(1, EPOCHS + 1))
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/test-epoch-3.json" in names and len(names) == EPOCHS + 1
    local = client.download_artifacts(
        run.info.run_id, "evaluation/test-epoch-3.json", str(tmp_path)
    )
    document = json.loads(await asyncio.to_thread(Path(local).read_text))
    assert document["confusion_matrix"] == [[3, 1], [0, 2]] and document["phase"] == "test"


async def test_unreachable_mlflow_is_one_warning_and_tensorboard_goes_on(
    settings: Settings, redis_client: aredis.Redis
) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    job_id = "down-job"
    await emit_job(settings, redis_client, job_id)
    started = time.monotonic()
    await asyncio.wait_for(
        track_job(
            settings,
            redis_client,
            job_id,
            CONFIG,
            mlflow_uri=f"http://127.0.0.1:{closed_port()}",
            mlflow_timeout_s=5,
        ),
        timeout=60,
    )
    assert time.monotonic() - started < 30

    events = await stream_events(redis_client, job_id)
    warnings = [e for e in events if isinstance(e, JobWarning)]
    assert len(warnings) == 1
    assert warnings[0].message.startswith("MLflow unavailable: ")
    assert warnings[0].message.endswith("; the job goes on")
    (link,) = [e for e in events if isinstance(e, TrackingLinked)]
    assert link.mlflow_run_id is None and link.tensorboard_dir
    assert_epoch_scalars(read_scalars(tensorboard_dir(settings, job_id)), job_id)


async def test_delete_tracking_removes_the_job_folder(
    settings: Settings, redis_client: aredis.Redis
) -> None:
    await emit_job(settings, redis_client, "gone")
    await emit_job(settings, redis_client, "kept")
    trackers = JobTrackers(settings, redis_client, TrackingSettings.from_env({}))
    trackers.start("gone", CONFIG)
    trackers.start("kept", CONFIG)
    await asyncio.wait_for(asyncio.gather(trackers.wait("gone"), trackers.wait("kept")), 30)
    assert any(tensorboard_dir(settings, "gone").iterdir())

    delete_tracking(settings, "gone")
    assert not tensorboard_dir(settings, "gone").exists()
    assert any(tensorboard_dir(settings, "kept").iterdir())
    await trackers.aclose()


def test_tracking_settings_from_env() -> None:
    assert TrackingSettings.from_env({}) == TrackingSettings()
    off = TrackingSettings.from_env(
        {"HEIMDALL_TENSORBOARD": "0", "HEIMDALL_MLFLOW_TRACKING_URI": "http://u:pw@mlflow:5000"}
    )
    assert not off.tensorboard and off.mlflow_uri == "http://u:pw@mlflow:5000"
    assert "pw" not in repr(off)


def caught_up(tracked: str, last: str) -> bool:
    return parse_event_id(tracked) >= parse_event_id(last)


async def test_a_retried_job_resumes_tracking_without_duplicates(
    settings: Settings, redis_client: aredis.Redis, tmp_path: Path
) -> None:
    """The worker died after epoch 2 (its tracker with it); the retry tracks on from there."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    job_id = "retried"
    uri = (tmp_path / "mlruns").as_uri()
    last = await emit_job(settings, redis_client, job_id, range(1, 3), finish=False)
    first = asyncio.create_task(
        track_job(settings, redis_client, job_id, CONFIG, mlflow_uri=uri), name="first"
    )
    state = state_path(settings, job_id)
    deadline = time.monotonic() + 60
    # The tracker's own TrackingLinked may come after `last`, hence >=.
    while not (state.exists() and caught_up(json.loads(state.read_text())["last_id"], last)):
        assert time.monotonic() < deadline, "the first tracker never caught up"
        assert not first.done()
        await asyncio.sleep(0.05)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first

    await emit_job(settings, redis_client, job_id, range(3, EPOCHS + 1))
    await asyncio.wait_for(
        track_job(settings, redis_client, job_id, CONFIG, mlflow_uri=uri), timeout=120
    )

    events = await stream_events(redis_client, job_id)
    assert not [e for e in events if isinstance(e, JobWarning)]
    links = [e for e in events if isinstance(e, TrackingLinked)]
    assert len(links) == 2 and links[0].mlflow_run_id == links[1].mlflow_run_id
    assert_epoch_scalars(read_scalars(tensorboard_dir(settings, job_id)), job_id)
    client = MlflowClient(tracking_uri=uri)
    run_id = links[0].mlflow_run_id
    assert run_id is not None
    assert client.get_run(run_id).info.status == "FINISHED"
    history = client.get_metric_history(run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    # A third call (the job is finished) returns at once.
    await asyncio.wait_for(
        track_job(settings, redis_client, job_id, CONFIG, mlflow_uri=uri), timeout=5
    )


async def test_tracking_stops_when_the_job_is_deleted(
    settings: Settings, redis_client: aredis.Redis
) -> None:
    job_id = "deleted"
    await emit_job(settings, redis_client, job_id, range(1, 2), finish=False)
    task = asyncio.create_task(track_job(settings, redis_client, job_id, CONFIG, mlflow_uri=None))
    deadline = time.monotonic() + 30
    while not tensorboard_dir(settings, job_id).exists():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    # What the API's DELETE does: flag the job, drop its stream, delete its files.
    await redis_client.set(keys.cancel_flag(job_id), DeleteJob(job_id=job_id).type_name())
    await redis_client.delete(keys.job_stream(job_id))
    delete_tracking(settings, job_id)
    await asyncio.wait_for(task, timeout=10)
    assert not tensorboard_dir(settings, job_id).exists()


@pytest.mark.parametrize("job_id", ["", "..", "../x", "a/b"])
def test_a_job_id_cannot_name_a_folder_outside_its_own(job_id: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        delete_tracking(Settings(data_dir=tmp_path), job_id)


async def test_evaluations_and_event_files_reach_the_store(
    stored: Settings, redis_client: aredis.Redis, tmp_path: Path
) -> None:
    """A store outside the data dir (a `file://` folder, or S3) gets every evaluation as JSON
    and the job's final event files; another machine's `heimdall tensorboard` pulls them back;
    deleting the job's objects leaves none."""
    store = open_store(stored)
    job_id = "exported"
    task = asyncio.create_task(
        track_job(stored, redis_client, job_id, CONFIG, mlflow_uri=None, store=store)
    )
    await emit_job(stored, redis_client, job_id)
    await asyncio.wait_for(task, timeout=60)

    names = [k.rsplit("/", 1)[-1] for k in store.list(job_key(job_id, "evaluation/"))]
    want = sorted([f"val-epoch-{e}.json" for e in range(1, EPOCHS + 1)] + ["test-epoch-3.json"])
    assert names == want
    test_doc = json.loads(store.get_bytes(job_key(job_id, "evaluation/test-epoch-3.json")))
    assert test_doc == json.loads(
        json.dumps(evaluation_document(evaluation_event(job_id, "test", 3)))
    )
    assert test_doc["confusion_matrix"] == [[3, 1], [0, 2]] and test_doc["phase"] == "test"

    local = {p.name: p.read_bytes() for p in tensorboard_dir(stored, job_id).iterdir()}
    remote = {k.rsplit("/", 1)[-1]: store.get_bytes(k) for k in store.list(tensorboard_key(job_id))}
    assert remote == local and local, "the store holds the closed event files as written"

    elsewhere = Settings(data_dir=tmp_path / "viewer")
    root = tensorboard_root(elsewhere)
    assert pull_tensorboard(store, root) == len(local)
    assert pull_tensorboard(store, root) == 0, "an unchanged file is not pulled twice"
    assert_epoch_scalars(read_scalars(tensorboard_dir(elsewhere, job_id)), job_id)

    assert store.delete_job(job_id) == len(want) + len(local)
    assert [k for prefix in job_prefixes(job_id) for k in store.list(prefix)] == []


def test_event_files_upload_when_changed_and_at_most_every_interval(tmp_path: Path) -> None:
    store = BlobStore(StorageConfig((tmp_path / "blobs").as_uri()))
    folder = tmp_path / "tb"
    folder.mkdir()
    (folder / "events.1").write_bytes(b"a")
    export = StoreExport(store, "job", folder, interval_s=3600)
    assert export.sync_tensorboard() == 1
    (folder / "events.1").write_bytes(b"ab")
    (folder / "events.2").write_bytes(b"c")
    assert export.sync_tensorboard() == 0, "within the interval nothing is sent"
    assert export.sync_tensorboard(force=True) == 2
    assert export.sync_tensorboard(force=True) == 0, "unchanged files are not sent again"
    assert store.get_bytes(tensorboard_key("job", "events.1")) == b"ab"


async def test_the_default_store_writes_evaluations_beside_the_model_and_copies_nothing(
    settings: Settings, redis_client: aredis.Redis
) -> None:
    store = open_store(settings)  # file:// on the data dir
    task = asyncio.create_task(
        track_job(settings, redis_client, "here", CONFIG, mlflow_uri=None, store=store)
    )
    await emit_job(settings, redis_client, "here")
    await asyncio.wait_for(task, timeout=30)
    evaluations = settings.artifacts_dir / "here" / "evaluation"
    assert (evaluations / "test-epoch-3.json").is_file()
    # The event files are the store's objects already: one copy on disk, where TensorBoard wrote.
    assert store.list(tensorboard_key("here")) == [
        f"tensorboard/here/{p.name}" for p in sorted(tensorboard_dir(settings, "here").iterdir())
    ]
    assert pull_tensorboard(store, tensorboard_root(settings)) == 0


async def test_a_failing_store_is_one_warning_and_tensorboard_goes_on(
    settings: Settings, redis_client: aredis.Redis, tmp_path: Path
) -> None:
    root = tmp_path / "broken"
    root.mkdir()
    (root / "jobs").write_text("a file where the store's folder should be")
    store = BlobStore(StorageConfig(root.as_uri()))
    task = asyncio.create_task(
        track_job(settings, redis_client, "stuck", CONFIG, mlflow_uri=None, store=store)
    )
    await emit_job(settings, redis_client, "stuck")
    await asyncio.wait_for(task, timeout=30)
    warnings = [e for e in await stream_events(redis_client, "stuck") if isinstance(e, JobWarning)]
    assert len(warnings) == 1
    assert warnings[0].message.startswith("object storage unavailable for tracking output")
    assert_epoch_scalars(read_scalars(tensorboard_dir(settings, "stuck")), "stuck")

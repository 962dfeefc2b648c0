"""MLflow: one run per job, with the config as params, per-epoch metrics and the ONNX model.

MLflow's client is synchronous and, against a tracking server, retries for minutes by default.
Every call therefore runs in a thread under a deadline, and the first failure or timeout
disables MLflow for the job: `failure` then says why (the tracker turns it into one
`JobWarning`) and later calls do nothing. Nothing here raises.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import structlog

from services.tracking.evaluation import artifact_name, evaluation_document, evaluation_scalars
from services.tracking.settings import mlflow_installed
from services.tracking.tensorboard import EPOCH_METRICS
from shared.events import (
    EpochCompleted,
    EvaluationCompleted,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
)

log = structlog.get_logger(__name__)

EXPERIMENT = "heimdall"

UPLOAD_TIMEOUT_FACTOR = 10
"""The model upload may take this many times the per-call timeout."""

# MLflow's own HTTP defaults (7 retries with exponential backoff, 120 s per request) would
# keep a thread busy for minutes against a dead server; an operator's explicit values win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": 1,
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 1,
    "MLFLOW_HTTP_REQUEST_TIMEOUT": 5,
}

FILE_STORE_OPT_IN = "MLFLOW_ALLOW_FILE_STORE"
"""MLflow 3 refuses its file store unless this is set; an explicit `file:` URI is that choice."""


def _mlflow_defaults(file_store: bool) -> None:
    """Our defaults for MLflow's settings, as the defaults of MLflow's own setting objects:
    an `MLFLOW_*` variable an operator sets still wins, and `os.environ` (which the training
    processes and every other library inherit) stays as the process was started."""
    from mlflow import environment_variables as variables

    defaults: dict[str, object] = dict(HTTP_DEFAULTS)
    if file_store:
        defaults[FILE_STORE_OPT_IN] = True
    for name, value in defaults.items():
        getattr(variables, name).default = value


MAX_PARAM_LENGTH = 6000
"""MLflow's limit on one param value."""

PARAMS_PER_CALL = 100
METRICS_PER_CALL = 1000
"""MLflow's limits on one log_batch call."""

T = TypeVar("T")

TERMINAL_STATUS = {JobCompleted: "FINISHED", JobFailed: "FAILED", JobCancelled: "KILLED"}


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text[:MAX_PARAM_LENGTH]


def _epoch_metrics(event: EpochCompleted) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step) for each metric the epoch has."""
    stamp = int(event.ts * 1000)
    return [
        (name, float(value), stamp, event.epoch)
        for name in EPOCH_METRICS
        if (value := getattr(event, name)) is not None
    ]


Rows = list[tuple[str, float, int, int]]


def _sorted_out(
    events: Iterable[Event],
) -> tuple[Rows, Rows, list[EvaluationCompleted], Event | None]:
    """The metric rows of epochs and validations, those of the test set, the evaluations
    (for their JSON artifacts) and the final event among `events`."""
    rows: Rows = []
    tests: Rows = []
    evaluations: list[EvaluationCompleted] = []
    final: Event | None = None
    for event in events:
        if isinstance(event, EpochCompleted):
            rows.extend(_epoch_metrics(event))
        elif isinstance(event, EvaluationCompleted):
            stamp = int(event.ts * 1000)
            scalars = [(k, v, stamp, event.epoch) for k, v in evaluation_scalars(event)]
            (tests if event.phase == "test" else rows).extend(scalars)
            evaluations.append(event)
        elif type(event) in TERMINAL_STATUS:
            final = event
    return rows, tests, evaluations, final


def _is_file_store(uri: str) -> bool:
    scheme, sep, _ = uri.partition(":")
    # A bare path (no scheme, or a Windows drive letter) is a file store too.
    return scheme == "file" or not sep or len(scheme) == 1


class _Run:
    """The blocking MLflow calls for one run; used from one thread at a time."""

    def __init__(self, uri: str) -> None:
        _mlflow_defaults(_is_file_store(uri))
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None
        self.last_step = 0

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self.client.create_experiment(EXPERIMENT))
        except MlflowException:
            # Another worker created it in the meantime.
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def start(self, job_id: str, config: Mapping[str, Any], run_id: str | None) -> str:
        """Resume `run_id` (a retried job) or create the job's run and log its params."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            history = self.client.get_metric_history(run_id, EPOCH_METRICS[0])
            self.last_step = max((m.step for m in history), default=0)
            self.run_id = run_id
            return run_id
        from mlflow.entities import Param

        run = self.client.create_run(
            self._experiment_id(), run_name=job_id, tags={"heimdall.job_id": job_id}
        )
        self.run_id = run.info.run_id
        params = [Param(str(k), _param_value(v)) for k, v in sorted(config.items())]
        for i in range(0, len(params), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[i : i + PARAMS_PER_CALL])
        return self.run_id

    def log_metrics(self, rows: list[tuple[str, float, int, int]], resumed: bool = True) -> None:
        """All rows in as few log_batch calls as MLflow allows; epochs already logged by an
        earlier attempt of the job are skipped (unless not `resumed`: the test set's rows
        are logged once, at the best epoch's step)."""
        from mlflow.entities import Metric

        assert self.run_id is not None
        fresh = [r for r in rows if not resumed or r[3] > self.last_step]
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in fresh]
        for i in range(0, len(metrics), METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + METRICS_PER_CALL])

    def log_evaluation(self, event: EvaluationCompleted) -> None:
        """The confusion matrix and per-class metrics as a JSON artifact (the scalars go
        through `log_metrics`)."""
        assert self.run_id is not None
        self.client.log_dict(self.run_id, evaluation_document(event), artifact_name(event))

    def log_model(self, path: Path) -> None:
        """Upload the ONNX model under `model/`; a model file that is gone is no error."""
        assert self.run_id is not None
        if not path.is_file():
            return
        self.client.log_artifact(self.run_id, str(path), artifact_path="model")

    def finish(self, status: str) -> None:
        assert self.run_id is not None
        self.client.set_terminated(self.run_id, status=status)


class MlflowSink:
    """One job's MLflow run, fed from the event loop; every call is bounded and never raises."""

    def __init__(self, uri: str, job_id: str, timeout_s: float) -> None:
        self._uri = uri
        self._job_id = job_id
        self._timeout_s = timeout_s
        self._run: _Run | None = None
        self.failure: str | None = None
        """Why MLflow was given up for this job; None while it works."""

    @property
    def run_id(self) -> str | None:
        return None if self._run is None else self._run.run_id

    async def _call(self, fn: Callable[..., T], *args: Any, factor: float = 1) -> T | None:
        if self.failure is not None:
            return None
        started = time.monotonic()
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(fn, *args), timeout=self._timeout_s * factor
            )
        except TimeoutError:
            limit = self._timeout_s * factor
            self.failure = f"no answer from {self._safe_uri()} within {limit:g} s"
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}".strip()[:500]
        log.warning(
            "mlflow unavailable; given up for this job",
            error=self.failure,
            seconds=round(time.monotonic() - started, 3),
        )
        return None

    def _safe_uri(self) -> str:
        # Credentials in a URI (user:password@host) stay out of events and logs.
        scheme, sep, rest = self._uri.partition("://")
        return scheme + sep + rest.rpartition("@")[2] if sep else self._uri

    async def start(self, config: Mapping[str, Any], run_id: str | None = None) -> str | None:
        """Create (or resume) the run; returns its id, or None when MLflow is unavailable."""
        if not mlflow_installed():
            self.failure = "the mlflow package is not installed (pip install heimdall[mlflow])"
            return None
        # The first call imports mlflow, which alone can take seconds on a busy machine.
        self._run = await self._call(_Run, self._uri, factor=UPLOAD_TIMEOUT_FACTOR)
        if self._run is None:
            return None
        return await self._call(self._run.start, self._job_id, dict(config), run_id)

    async def write(self, events: Iterable[Event]) -> None:
        """Log the epochs among `events` in one batch; on a final event, the model and the
        run's terminal status."""
        if self._run is None or self.failure is not None:
            return
        rows, tests, evaluations, final = _sorted_out(events)
        if rows:
            await self._call(self._run.log_metrics, rows)
        if tests:
            await self._call(self._run.log_metrics, tests, False)
        for evaluation in evaluations:
            await self._call(self._run.log_evaluation, evaluation)
        if final is None:
            return
        if isinstance(final, JobCompleted) and final.onnx_model_path:
            path = Path(final.onnx_model_path)
            await self._call(self._run.log_model, path, factor=UPLOAD_TIMEOUT_FACTOR)
        await self._call(self._run.finish, TERMINAL_STATUS[type(final)])

"""POST /training/jobs/{id}/predict: a job's ONNX model applied to uploaded recordings.

onnxruntime runs the exported graph (features included, see services/worker/onnx_export.py);
sessions are cached per job, a few at a time (`ModelCache`), and reloaded when the file
changes. Decoding, shaping and inference run off the event loop. The API imports no torch.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any

import numpy as np
import onnxruntime as ort
from litestar import Request, post
from litestar.datastructures import State, UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath

from services.api.errors import Conflict, InvalidInput, NotFound
from services.api.jobs import _job_or_404, _now, _res
from services.api.predict_input import ModelInput, read_uploads
from shared.settings import Settings
from shared.storage import check_key, job_key


@dataclass(frozen=True)
class Model:
    session: ort.InferenceSession
    spec: ModelInput
    stamp: tuple[str, int]
    """(path, modification time in ns): a re-exported file is loaded again."""

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run(["logits"], {"waveform": batch})
        shifted = np.asarray(logits, dtype=np.float64)
        shifted -= shifted.max(axis=1, keepdims=True)
        p = np.exp(shifted)
        return p / p.sum(axis=1, keepdims=True)


class ModelCache:
    """The most recently used jobs' sessions, at most `size`."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._models: OrderedDict[str, Model] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, path: Path) -> Model:
        stamp = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            model = self._models.get(job_id)
            if model is not None and model.stamp == stamp:
                self._models.move_to_end(job_id)
                return model
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        props = dict(session.get_modelmeta().custom_metadata_map)
        model = Model(session, ModelInput.of(props), stamp)
        with self._lock:
            self._models[job_id] = model
            self._models.move_to_end(job_id)
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        return model

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._models.pop(job_id, None)


@dataclass
class PredictForm:
    """multipart/form-data: one or more parts named `files`, each a recording (a WAV, or both
    files of a SigMF pair)."""

    files: list[UploadFile]


def _predict(
    model: Model, parts: Sequence[tuple[str | None, bytes]]
) -> tuple[list[str], np.ndarray]:
    names, batch = read_uploads(parts, model.spec)
    return names, model.probabilities(batch)


def predict_route(settings: Settings, cache: ModelCache) -> Any:
    """The route, with its own body limit (`settings.max_predict_bytes`)."""

    @post(
        "/api/v1/training/jobs/{job_id:str}/predict",
        status_code=200,
        summary="Classify uploaded recordings with the job's model",
        tags=["training jobs"],
        request_max_body_size=settings.max_predict_bytes,
        opt={"body": "multipart/form-data"},
    )
    async def predict(
        job_id: FromPath[str],
        state: State,
        request: Request[Any, Any, Any],
        data: Annotated[PredictForm, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> dict[str, Any]:
        """`{classes, epoch, predictions: [{file, label, probabilities}]}`, one prediction per
        recording in upload order. 409 while the job has no model; 400 naming a file that is
        not a recording."""
        res = _res(state)
        job_id, row = await _job_or_404(res, job_id)
        now = await _now(res, row)
        stored = now.get("onnx_model_path")
        if not stored:
            raise Conflict(
                f"job {job_id} has no model yet (it is {now['status']}); predictions use the"
                " ONNX model a completed job exports"
            )
        path = await asyncio.to_thread(_model_file, res, job_id, stored)
        files = data.files if isinstance(data.files, list) else [data.files]
        if not files:
            raise InvalidInput("files: at least one file part is needed", "files")
        parts = [(f.filename, await f.read()) for f in files]
        model = await asyncio.to_thread(cache.get, job_id, path)
        names, probabilities = await asyncio.to_thread(_predict, model, parts)
        classes = model.spec.classes
        return {
            "job_id": job_id,
            "classes": classes,
            "epoch": now.get("best_epoch"),
            "predictions": [
                {
                    "file": name,
                    "label": classes[int(np.argmax(p))],
                    "probabilities": dict(zip(classes, map(float, p), strict=True)),
                }
                for name, p in zip(names, probabilities, strict=True)
            ],
        }

    return predict


def _model_file(res: Any, job_id: str, stored: str) -> Path:
    """A local copy of the job's ONNX model: the file itself in a `file://` store, else a copy
    downloaded once under `<data dir>/cache/models/<job id>/`. NotFound when it is missing."""
    name = PurePath(stored).name
    try:
        key = job_key(job_id, check_key(name))
    except ValueError:
        raise NotFound(f"the ONNX model file of job {job_id} is missing") from None
    local = res.blobs.local_path(key)
    if local is not None:
        if not local.is_file():
            raise NotFound(f"the ONNX model file of job {job_id} is missing")
        return Path(local)
    copy = res.settings.data_dir / "cache" / "models" / job_id / name
    if not copy.is_file():
        try:
            res.blobs.get_file(key, copy)
        except NotFound:
            raise NotFound(f"the ONNX model file of job {job_id} is missing") from None
    return copy

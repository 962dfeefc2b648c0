"""ONNX export of the best model, features included, checked against PyTorch with onnxruntime.

The exported graph stands on its own: it takes mono `[batch, samples]` or IQ
`[batch, 2, samples]` at the training rate, of any length (cropped to its start or zero-padded
to the training length, as training did), and its `metadata_props` say what it needs and
gives: `classes` (JSON list, in output order), `sample_rate`, `num_samples`, `channels`
(`real` | `iq`) and the feature parameters.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.worker.errors import OnnxExportError
from services.worker.features import (
    LOG_FLOOR,
    MIN_SIDE,
    ExportSpectrogram,
    FeatureExtractor,
    FeatureParams,
    InferenceModel,
)

OPSET = 17
MAX_ABS_DIFF = 2e-3
"""Largest logit difference accepted between onnxruntime and PyTorch on the same waveforms."""


def metadata(params: FeatureParams, classes: Sequence[str]) -> dict[str, str]:
    """What a standalone user of model.onnx needs to feed it and read its output."""
    return {
        "classes": json.dumps(list(classes)),
        "sample_rate": str(params.sample_rate),
        "num_samples": str(params.num_samples),
        "channels": params.channels,
        "input_layout": "[batch, samples]" if params.channels == "real" else "[batch, 2, samples]",
        "n_fft": str(params.n_fft),
        "hop_length": str(params.hop_length),
        "n_mels": str(params.n_mels),
        "bands": params.bands,
        "window": "hann",
        "log_floor": repr(LOG_FLOOR),
        "min_side": str(MIN_SIDE),
    }


def _write_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def export_onnx(
    features: FeatureExtractor,
    network: nn.Module,
    sample: torch.Tensor,
    path: Path,
    classes: Sequence[str] = (),
) -> float:
    """Export waveform → logits to `path` and return the largest absolute logit difference
    between onnxruntime and the PyTorch training model on `sample` ((batch, samples) or
    (batch, 2, samples)).

    Raises OnnxExportError when the export fails or the difference exceeds MAX_ABS_DIFF.
    """
    import onnxruntime as ort

    features = copy.deepcopy(features).cpu().eval()
    network = copy.deepcopy(network).cpu().eval().to(memory_format=torch.contiguous_format)
    n = features.params.num_samples
    exported = InferenceModel(ExportSpectrogram(features.logmel), features.norm, network, n)
    reference = InferenceModel(features.logmel, features.norm, network, n).eval()
    sample = sample.detach().float().cpu()
    samples_axis = sample.dim() - 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is the one that works without onnxscript (not a
            # dependency); it announces its deprecation and declines to fold strided slices.
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript", Warning)
            warnings.filterwarnings("ignore", "The feature will be removed", Warning)
            warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
            torch.onnx.export(
                exported.eval(),
                (sample,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=["waveform"],
                output_names=["logits"],
                dynamic_axes={
                    "waveform": {0: "batch", samples_axis: "samples"},
                    "logits": {0: "batch"},
                },
            )
        _write_metadata(tmp, metadata(features.params, classes))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"waveform": sample.numpy()})[0]
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise OnnxExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    with torch.inference_mode():
        want = reference(sample).numpy()
    diff = float(np.max(np.abs(np.asarray(got) - want)))
    if not np.isfinite(diff) or diff > MAX_ABS_DIFF:
        tmp.unlink(missing_ok=True)
        raise OnnxExportError(
            f"ONNX model disagrees with the PyTorch model: max abs logit difference {diff:.3g}"
            f" exceeds {MAX_ABS_DIFF}"
        )
    tmp.replace(path)
    return diff

"""ONNX export of the best model, features included, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.worker.errors import OnnxExportError
from services.worker.features import ExportLogMel, FeatureExtractor, InferenceModel

OPSET = 17
MAX_ABS_DIFF = 2e-3
"""Largest logit difference accepted between onnxruntime and PyTorch on the same waveforms."""


def export_onnx(
    features: FeatureExtractor, network: nn.Module, sample: torch.Tensor, path: Path
) -> float:
    """Export waveform → logits to `path` and return the largest absolute logit difference
    between onnxruntime and the PyTorch training model on `sample` (batch, samples).

    Raises OnnxExportError when the export fails or the difference exceeds MAX_ABS_DIFF.
    """
    import onnxruntime as ort

    features = copy.deepcopy(features).cpu().eval()
    network = copy.deepcopy(network).cpu().eval().to(memory_format=torch.contiguous_format)
    exported = InferenceModel(ExportLogMel(features.logmel), features.norm, network).eval()
    reference = InferenceModel(features.logmel, features.norm, network).eval()
    sample = sample.detach().float().cpu()
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
                exported,
                (sample,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=["waveform"],
                output_names=["logits"],
                dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "logits": {0: "batch"}},
            )
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

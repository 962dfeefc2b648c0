"""The network: a timm ConvNeXt on one-channel log-mel "images"."""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlparse

import structlog
import timm
from torch import nn

from services.worker.errors import PretrainedWeightsUnavailable
from shared.config import TrainingConfig

log = structlog.get_logger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_PROBE_TIMEOUT_S = 3.0


def build_model(config: TrainingConfig, num_classes: int) -> nn.Module:
    """`config.model_architecture` with `in_chans=1`, `num_classes` and `drop_rate=dropout_rate`;
    ImageNet weights when `pretrained` (or PretrainedWeightsUnavailable at once), unless the
    weights come from `init_from_job` (see finetune.py); the backbone frozen when
    `freeze_backbone`."""
    kwargs: dict[str, Any] = {
        "in_chans": 1,
        "num_classes": num_classes,
        "drop_rate": config.dropout_rate,
    }
    if config.pretrained and config.init_from_job is None:
        model = _create_pretrained(config.model_architecture, kwargs)
    else:
        model = timm.create_model(config.model_architecture, pretrained=False, **kwargs)
    if config.freeze_backbone:
        freeze_backbone(model)
    return model


def head_prefix(model: nn.Module) -> str:
    """Parameter-name prefix of the classification head (`head.` for ConvNeXt)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = str(cfg.get("classifier") or "head.fc")
    return classifier.split(".", 1)[0] + "."


def freeze_backbone(model: nn.Module) -> None:
    """Only the head (its norm and classifier) keeps `requires_grad`."""
    prefix = head_prefix(model)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(prefix)


def hf_hub_id(architecture: str) -> str | None:
    cfg = timm.models.get_pretrained_cfg(architecture)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def cached_weights(hub_id: str) -> str | None:
    """The weights file of `hub_id` in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = hub_id.partition("@")
    for name in _WEIGHT_FILES:
        path = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(path, str):
            return path
    return None


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached, or None. One short TCP probe instead of the client's
    minute of retries, so an offline worker fails at once."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or 443
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc})"
    return None


def _create_pretrained(architecture: str, kwargs: dict[str, Any]) -> nn.Module:
    hub_id = hf_hub_id(architecture) or f"timm/{architecture}"
    how = (
        'Provide them by running `python -c "import timm;'
        f" timm.create_model('{architecture}', pretrained=True)\"` once on a machine with"
        " internet access and copying its Hugging Face cache (~/.cache/huggingface/hub) to this"
        " worker (or pointing HF_HOME / HF_HUB_CACHE at a copy), then retry; or submit the job"
        " with pretrained=false to train from scratch."
    )
    cached = cached_weights(hub_id)
    if cached is None:
        reason = hub_unreachable()
        if reason is not None:
            raise PretrainedWeightsUnavailable(
                f"pretrained=true needs the ImageNet weights of {architecture} ({hub_id}), which"
                f" are not in the local Hugging Face cache, and {reason}. {how}"
            )
    # A cached file is loaded as a file: timm then never asks the hub (offline, at once).
    overlay = {"file": cached} if cached is not None else None
    try:
        model = timm.create_model(
            architecture, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
        )
    except Exception as exc:
        raise PretrainedWeightsUnavailable(
            f"pretrained=true: loading the ImageNet weights of {architecture} ({hub_id})"
            f" failed: {type(exc).__name__}: {exc}. {how}"
        ) from exc
    log.info("pretrained weights loaded", architecture=architecture, hub_id=hub_id)
    return model

"""TrainingConfig at the edges: every field is in the OpenAPI schema the dashboard's form is built
from and in the README's field table; the training options' rules answer 400 naming the field."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from services.api.app import create_app
from shared.config import TrainingConfig
from shared.settings import Settings

JOBS = "/api/v1/training/jobs"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as c:
        yield c


async def test_every_field_is_in_the_openapi_schema(client: AsyncTestClient[Any]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    props = schema["components"]["schemas"]["TrainingConfig"]["properties"]
    assert set(props) == set(TrainingConfig.__struct_fields__)
    crop = props["aug_time_crop"]
    assert (crop["minimum"], crop["maximum"], crop["default"]) == (0.0, 0.9, 0.0)
    assert set(props["class_weighting"]["enum"]) == {"none", "balanced"}


def test_every_field_is_in_the_readme_table() -> None:
    rows = set(re.findall(r"^\| `([a-z_0-9]+)` \|", README.read_text(), flags=re.M))
    missing = set(TrainingConfig.__struct_fields__) - rows
    assert not missing, f"README's field table lacks {sorted(missing)}"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"freeze_backbone": True, "pretrained": False}, "config.freeze_backbone"),
        ({"aug_noise_snr_db_min": 20.0, "aug_noise_snr_db_max": 10.0}, "aug_noise_snr_db_min"),
        ({"aug_time_crop": 0.95}, "config.aug_time_crop"),
        ({"aug_time_masks": 11}, "config.aug_time_masks"),
        ({"aug_freq_mask_width": 0.6}, "config.aug_freq_mask_width"),
        ({"aug_freq_shift_hz": -1.0}, "config.aug_freq_shift_hz"),
        ({"init_from_job": "last-week"}, "config.init_from_job"),
        ({"class_weighting": "inverse"}, "config.class_weighting"),
        ({"label_smoothing": 0.7}, "config.label_smoothing"),
        ({"grad_clip_norm": 0}, "config.grad_clip_norm"),
        ({"precision": "fp8"}, "config.precision"),
    ],
)
async def test_training_options_are_validated_naming_the_field(
    client: AsyncTestClient[Any], config: dict[str, Any], field: str
) -> None:
    resp = await client.post(JOBS, json={"job_name": "x", "config": config})
    assert resp.status_code == 400, resp.text
    assert field in resp.json()["detail"], resp.json()
    assert (await client.get(JOBS)).json()["total"] == 0


async def test_a_frozen_backbone_on_a_trained_one_is_accepted(
    client: AsyncTestClient[Any],
) -> None:
    source = str(uuid.uuid4())
    config = {"freeze_backbone": True, "pretrained": False, "init_from_job": source}
    resp = await client.post(JOBS, json={"job_name": "x", "config": config})
    assert resp.status_code == 201, resp.text
    assert resp.json()["config"]["init_from_job"] == source

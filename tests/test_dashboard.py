"""The dashboard's files as the API serves them (no browser needed)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from services.api.app import create_app
from services.api.dashboard import STATIC_DIR
from shared.config import TrainingConfig
from shared.settings import Settings

PACKAGE_DATA = ("*.html", "*.js", "*.css", "LICENSE*")
"""The patterns of `tool.setuptools.package-data` in pyproject.toml that ship the dashboard."""


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as c:
        yield c


async def test_root_serves_the_page_outside_the_schema(client: AsyncTestClient[Any]) -> None:
    resp = await client.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/js/main.js">' in resp.text
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/" not in schema["paths"]
    assert not any(p.startswith("/static") for p in schema["paths"])


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/static/js/main.js", "text/javascript"),
        ("/static/app.css", "text/css"),
        ("/static/vendor/uPlot.iife.min.js", "text/javascript"),
        ("/static/vendor/uPlot.min.css", "text/css"),
    ],
)
async def test_static_files_have_their_types(
    client: AsyncTestClient[Any], path: str, kind: str
) -> None:
    resp = await client.get(path)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith(kind)
    assert "no-cache" in resp.headers["cache-control"]


async def test_no_path_escapes_the_static_dir(client: AsyncTestClient[Any]) -> None:
    for path in ("/static/../dashboard.py", "/static/%2e%2e/dashboard.py", "/static/nope.js"):
        assert (await client.get(path)).status_code == 404


def test_every_module_import_resolves() -> None:
    """No build step: a typo in an import path would only show as a blank page."""
    modules = list(STATIC_DIR.rglob("*.js"))
    for module in modules:
        if "vendor" in module.parts:
            continue
        for target in re.findall(r'^import .* from "(\.[^"]+)";$', module.read_text(), re.M):
            assert (module.parent / target).resolve().is_file(), f"{module}: {target}"


def test_package_data_ships_every_file() -> None:
    """Each file under static/ matches a package-data pattern, so `pip install .` ships it."""
    files = [p for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert any(path.match(pattern) for pattern in PACKAGE_DATA), path
    assert (STATIC_DIR / "vendor" / "LICENSE.uPlot").read_text().startswith("The MIT License")


def test_every_config_field_has_its_place_in_the_form() -> None:
    """The form is built from the schema, so an unknown field still shows, under "Other";
    each field should sit in its group, once."""
    source = (STATIC_DIR / "js" / "views" / "new-job.js").read_text()
    groups = source.split("const GROUPS = [", 1)[1].split("\n];", 1)[0]
    placed = re.findall(r'"([a-z0-9_]+)"', groups)
    assert len(placed) == len(set(placed)), "a field in two groups"
    assert set(placed) == set(TrainingConfig.__struct_fields__)

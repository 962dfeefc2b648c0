"""The web dashboard: one HTML page at `/` and its static files under `/static/`.

Plain ES modules, CSS and a vendored uPlot, with no build step; everything the page shows comes
from the public REST and WebSocket API, so the dashboard holds no state and no logic of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import MediaType, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).parent / "static"
"""Shipped as package data (see `tool.setuptools.package-data` in pyproject.toml)."""

PUBLIC = {"public": True}
"""Route option: the page and its files hold no data, so they load without the API token (the
page then asks for the token when the API answers 401). Honoured by the token guard."""

# Revalidate on every load: the files change with each release and carry no version in their
# names, while ETags keep the revalidation cheap.
_REVALIDATE = CacheControlHeader(no_cache=True)


@get(
    "/",
    include_in_schema=False,
    media_type=MediaType.HTML,
    cache_control=_REVALIDATE,
    name="dashboard",
    opt=PUBLIC,
)
async def dashboard_page() -> Response[bytes]:
    """The single page; the views are routed in the browser (`#/jobs/<id>`, `#/compare?...`)."""
    return Response((STATIC_DIR / "index.html").read_bytes(), media_type=MediaType.HTML)


def dashboard_routes() -> list[Any]:
    """The route handlers that serve the dashboard, for `create_app`."""
    static = create_static_files_router(
        path="/static",
        directories=[STATIC_DIR],
        name="dashboard_static",
        cache_control=_REVALIDATE,
        include_in_schema=False,
        opt=PUBLIC,
    )
    return [dashboard_page, static]

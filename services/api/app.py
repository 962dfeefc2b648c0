"""The Litestar application: REST, WebSocket, dashboard. Built by `create_app(settings)`."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from services.api.auth import token_guard
from services.api.dashboard import dashboard_routes
from services.api.datasets import DatasetsController
from services.api.errors import EXCEPTION_HANDLERS
from services.api.evaluation import EvaluationController
from services.api.health import health, ready
from services.api.inputs import check_request
from services.api.jobs import JobsController
from services.api.observability import PROMETHEUS, metrics
from services.api.predict import ModelCache, predict_route
from services.api.resources import lifespan
from services.api.workers import WorkersController
from services.api.ws import ws_routes
from shared.settings import Settings


def create_app(settings: Settings) -> Litestar:
    """The API for these settings; store URLs must be resolved (see services.cli.embedded)."""
    handlers: list[Any] = [
        JobsController,
        EvaluationController,
        predict_route(settings, ModelCache()),
        DatasetsController,
        WorkersController,
        health,
        ready,
        metrics,
        *ws_routes(),
        *dashboard_routes(),
    ]
    return Litestar(
        route_handlers=handlers,
        lifespan=[lifespan(settings)],
        exception_handlers=EXCEPTION_HANDLERS,
        before_request=check_request,
        guards=[token_guard(settings.api_token)] if settings.api_token else [],
        middleware=[PROMETHEUS.middleware],
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins))
        if settings.cors_origins
        else None,
        openapi_config=OpenAPIConfig(
            title="Heimdall Training",
            version="0.1.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
        request_max_body_size=settings.max_body_bytes,
        # Logging is the process's (shared/logs.py): Litestar's default config would put its own
        # plain-text handler on the root logger.
        logging_config=None,
        debug=False,
    )

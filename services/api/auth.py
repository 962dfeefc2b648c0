"""Bearer-token auth for REST and WebSocket, when HEIMDALL_API_TOKEN is set."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

OPEN_PATHS = frozenset({"/health"})
"""Liveness stays open so that orchestrators can probe without a secret; it reveals nothing."""


def presented_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The bearer token of the `Authorization` header; on WebSocket routes only (browsers
    cannot set headers there) also `?token=`, which elsewhere would put the secret in URLs,
    proxy logs and browser history."""
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if connection.scope["type"] == "websocket":
        return connection.query_params.get("token")
    return None


def token_guard(expected: str) -> Guard:
    """A guard that admits a connection only with the right token (constant-time compare)."""
    expected_bytes = expected.encode()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        # The dashboard's page and assets are public (they hold no data): the page must load
        # before it can ask the user for the token.
        if connection.url.path in OPEN_PATHS or handler.opt.get("public"):
            return
        given = presented_token(connection)
        if given is None or not hmac.compare_digest(given.encode(), expected_bytes):
            raise NotAuthorizedException(
                "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return guard

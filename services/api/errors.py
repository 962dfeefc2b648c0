"""The one place that turns errors into HTTP responses.

The domain errors are defined in `shared/errors.py` (no HTTP there); this module maps each kind
to a status code, and turns the framework's and the drivers' errors into a JSON body with a
detail a person can act on, never a driver's internal message.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR, HTTP_503_SERVICE_UNAVAILABLE
from redis.exceptions import RedisError

from shared.errors import (
    Conflict,
    HeimdallError,
    InvalidInput,
    NotFound,
    Unavailable,
    Unschedulable,
)

log = structlog.get_logger(__name__)


class UnsupportedMediaType(InvalidInput):
    """A body of a kind the route does not take (a form where JSON is expected)."""


STATUS: dict[type[HeimdallError], int] = {
    UnsupportedMediaType: 415,
    Unschedulable: 422,
    InvalidInput: 400,
    NotFound: 404,
    Conflict: 409,
    Unavailable: 503,
}
"""Each kind of domain error's status code; the most specific class listed wins."""


def status_of(exc: HeimdallError) -> int:
    """The status code for a domain error: its nearest listed class, else 400."""
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 400


def _body(status: int, detail: str, extra: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"status_code": status, "detail": detail}
    if extra:
        body["extra"] = extra
    return body


def heimdall_error_handler(_: Request[Any, Any, Any], exc: HeimdallError) -> Response[Any]:
    extra = {k: v for k, v in exc.extra.items() if v is not None}
    status = status_of(exc)
    return Response(_body(status, exc.detail, extra), status_code=status)


def validation_handler(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Litestar's validation errors, with the offending field named in the detail itself."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in extra:
        if isinstance(item, dict) and item.get("key"):
            parts.append(f"{item['key']}: {item.get('message', 'invalid')}")
        elif isinstance(item, dict) and item.get("message"):
            parts.append(str(item["message"]))
    detail = "; ".join(parts) or exc.detail
    return Response(_body(400, detail, extra), status_code=400)


def http_error_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Litestar's own errors; their headers (`WWW-Authenticate`, `Allow`...) are kept."""
    return Response(
        _body(exc.status_code, exc.detail, exc.extra),
        status_code=exc.status_code,
        headers=exc.headers,
    )


def data_error_handler(request: Request[Any, Any, Any], exc: asyncpg.DataError) -> Response[Any]:
    """A value the database cannot hold (an out-of-range number, say) is the caller's error.
    The driver's message speaks of query arguments and encodings, not of the request's fields,
    so it goes to the log, never into the answer."""
    log.warning("value refused by the database", path=request.url.path, error=str(exc))
    detail = "a value in the request is out of range or holds characters that cannot be stored"
    return Response(_body(400, detail), status_code=400)


DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    OSError,
)
"""A database that is down, restarting or full of connections. Redis errors are RedisErrors,
never bare OSErrors, so an OSError that reaches a route comes from connecting to PostgreSQL
(a refused or missing socket, a connect timeout)."""


def database_unavailable_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("database unavailable", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
    detail = f"the database (PostgreSQL) is unreachable ({type(exc).__name__}); try again shortly"
    return Response(_body(503, detail), status_code=HTTP_503_SERVICE_UNAVAILABLE)


def redis_unavailable_handler(request: Request[Any, Any, Any], exc: RedisError) -> Response[Any]:
    log.warning("redis unavailable", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
    detail = f"the job queue (Redis) is unreachable ({type(exc).__name__}); try again shortly"
    return Response(_body(503, detail), status_code=HTTP_503_SERVICE_UNAVAILABLE)


def unexpected_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The last resort: log with a traceback, answer without leaking internals."""
    log.exception("unhandled error", path=request.url.path, error=type(exc).__name__)
    return Response(
        _body(500, "internal error; it has been logged"),
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
        media_type=MediaType.JSON,
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HeimdallError: heimdall_error_handler,
    ValidationException: validation_handler,
    HTTPException: http_error_handler,
    asyncpg.DataError: data_error_handler,
    **dict.fromkeys(DATABASE_UNAVAILABLE, database_unavailable_handler),
    RedisError: redis_unavailable_handler,
    Exception: unexpected_handler,
}


__all__ = [
    "EXCEPTION_HANDLERS",
    "Conflict",
    "HeimdallError",
    "InvalidInput",
    "NotFound",
    "Unavailable",
    "Unschedulable",
    "UnsupportedMediaType",
]

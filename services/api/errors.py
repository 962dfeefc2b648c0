"""Domain errors of the API, and the one place that turns them into HTTP responses."""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR, HTTP_503_SERVICE_UNAVAILABLE
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)


class HeimdallError(Exception):
    """Base of the domain errors; `status_code` is how the edge reports it."""

    status_code = 400

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(HeimdallError):
    """A request that names a bad field or value."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail, field=field)


class NotFound(HeimdallError):
    status_code = 404


class Conflict(HeimdallError):
    """The request is valid but the job's state does not allow it."""

    status_code = 409


class Unavailable(HeimdallError):
    """A store the request needs is unreachable; the caller may retry."""

    status_code = 503


def _body(status: int, detail: str, extra: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"status_code": status, "detail": detail}
    if extra:
        body["extra"] = extra
    return body


def heimdall_error_handler(_: Request[Any, Any, Any], exc: HeimdallError) -> Response[Any]:
    extra = {k: v for k, v in exc.extra.items() if v is not None}
    return Response(_body(exc.status_code, exc.detail, extra), status_code=exc.status_code)


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
    return Response(_body(exc.status_code, exc.detail, exc.extra), status_code=exc.status_code)


def data_error_handler(_: Request[Any, Any, Any], exc: asyncpg.DataError) -> Response[Any]:
    """A value the database cannot hold (an out-of-range number, say) is the caller's error."""
    return Response(_body(400, f"invalid value: {exc}"), status_code=400)


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

"""The domain errors of every Heimdall service: one root, a few kinds, no HTTP.

Library code raises these; the API turns them into status codes in one place
(`services/api/errors.py`), the CLI into a message and an exit status. Each carries a `detail`
meant for a person (what was wrong and what to do) and never a driver's internal message.
They subclass `ValueError` where the old code raised a bare `ValueError`, so existing callers
that catch that keep working.
"""

from __future__ import annotations

from typing import Any


class HeimdallError(Exception):
    """Root of the domain errors. `extra` holds structured context (the offending `field`...)."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(HeimdallError, ValueError):
    """A value a caller gave is malformed or out of range; `field` names it when known."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.field = field


class Unschedulable(InvalidInput):
    """A well-formed config that no connected worker can run (no GPU, too few, no weights)."""


class NotFound(HeimdallError):
    """The thing asked for does not exist (or no longer does)."""


class Conflict(HeimdallError):
    """The request is valid, but the current state (a job's status, say) does not allow it."""


class Unavailable(HeimdallError):
    """A store or service the operation needs is unreachable; retrying later may succeed."""


class ConfigurationError(HeimdallError, ValueError):
    """A setting read from the environment is malformed; `variable` names it."""

    def __init__(self, detail: str, variable: str | None = None) -> None:
        super().__init__(detail, variable=variable)
        self.variable = variable

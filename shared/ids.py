"""Job ids: one spelling everywhere.

A job id is a UUID. Users may type it in any spelling `uuid.UUID` accepts (upper case, without
dashes, in braces, as `urn:uuid:`), and PostgreSQL would match all of them; Redis keys, channel
names, commands and events are plain strings and would not. So every edge (REST path, WebSocket
route, CLI argument) parses the id here once, and everything downstream only ever sees the
canonical form: lowercase, dashed.
"""

from __future__ import annotations

import uuid


class InvalidJobId(ValueError):
    """The text is no UUID in any spelling, so it cannot name a job."""

    def __init__(self, text: str) -> None:
        super().__init__(f"no training job with id {text!r} (a job id is a UUID)")
        self.text = text


def canonical_job_id(text: str) -> str:
    """The canonical spelling of a job id (`str(uuid.UUID(text))`); raises InvalidJobId."""
    try:
        return str(uuid.UUID(text.strip()))
    except (ValueError, AttributeError, TypeError):
        raise InvalidJobId(str(text)) from None

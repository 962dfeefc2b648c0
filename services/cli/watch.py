"""`heimdall jobs watch ID`: a live progress line for one job, from its WebSocket.

On a terminal the line is redrawn in place (carriage return) and each finished epoch is kept
above it; elsewhere (a pipe, a log file) it prints one plain line per epoch and per status
change. A dropped connection is resumed with `?after=<last event id>`, so nothing is missed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

import websockets

IDLE_TIMEOUT_S = 30.0
"""The server sends a status at least every 5 s; this much silence means a dead connection."""

MAX_RETRIES = 8
"""Consecutive failed reconnections before giving up."""


class WatchError(Exception):
    """The job cannot be watched (unknown job, refused token, server unreachable)."""


def socket_url(base_url: str, job_id: str, token: str | None, after: str | None) -> str:
    parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
    scheme = {"https": "wss", "wss": "wss"}.get(parts.scheme, "ws")
    query = [
        f"{name}={quote(value, safe='')}"
        for name, value in (("token", token), ("after", after))
        if value
    ]
    path = parts.path.rstrip("/") + f"/ws/training/{quote(job_id, safe='')}"
    return f"{scheme}://{parts.netloc}{path}" + ("?" + "&".join(query) if query else "")


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def _percent(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, int | float) else "-"


def metric_labels(m: dict[str, Any]) -> list[str]:
    """The line's metrics, each named: the latest batch's while training, else the latest
    epoch's train loss and validation accuracy."""
    if m.get("status") == "running" and m.get("batch_loss") is not None:
        return [
            f"batch loss {_num(m.get('batch_loss'), '.4f')}",
            f"batch acc {_percent(m.get('batch_accuracy'))}",
        ]
    metrics = m.get("metrics") or {}
    return [
        f"train loss {_num(metrics.get('train_loss'), '.4f')}",
        f"val acc {_percent(metrics.get('val_accuracy'))}",
    ]


class ProgressLine:
    """Renders status and epoch messages on `out`."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.status: str | None = None
        self._drawn = False

    def line(self, m: dict[str, Any]) -> str:
        percent = float(m.get("progress_percent") or 0.0)
        width = 20
        filled = int(width * min(max(percent, 0.0), 100.0) / 100)
        parts = [
            f"[{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}%",
            f"epoch {m.get('current_epoch') or 0}/{m.get('total_epochs') or '?'}",
        ]
        if m.get("total_batches"):
            parts.append(f"batch {m.get('current_batch') or 0}/{m['total_batches']}")
        parts += metric_labels(m)
        parts.append(str(m.get("status")))
        if m.get("status") == "queued" and m.get("waiting_for"):
            place = m.get("queue_position")
            where = f"position {place} of {m.get('queue_length')}, " if place else ""
            parts.append(f"{where}waiting for {m['waiting_for']}")
        if m.get("error_message"):
            parts.append(f"error: {m['error_message']}")
        return "  ".join(parts)

    def _write_above(self, text: str) -> None:
        if self.tty and self._drawn:
            self.out.write("\r\x1b[2K")
        self.out.write(text + "\n")
        self._drawn = False

    def status_message(self, m: dict[str, Any]) -> None:
        changed = m.get("status") != self.status
        self.status = m.get("status")
        text = self.line(m)
        if self.tty:
            columns = shutil.get_terminal_size((100, 20)).columns
            self.out.write("\r\x1b[2K" + text[: columns - 1])
            self._drawn = True
        elif changed:
            self.out.write(text + "\n")
        self.out.flush()

    def epoch_message(self, m: dict[str, Any]) -> None:
        text = (
            f"epoch {m['epoch']}/{m['total_epochs']}: train_loss {_num(m.get('train_loss'), '.4f')}"
            f"  val_loss {_num(m.get('val_loss'), '.4f')}"
            f"  train_acc {_num(m.get('train_accuracy'), '.4f')}"
            f"  val_acc {_num(m.get('val_accuracy'), '.4f')}"
            f"  lr {_num(m.get('learning_rate'), '.2e')}"
        )
        self._write_above(text)
        self.out.flush()

    def note(self, text: str) -> None:
        self._write_above(text)
        self.out.flush()

    def finish(self) -> None:
        if self.tty and self._drawn:
            self.out.write("\n")
            self._drawn = False
        self.out.flush()


async def watch(  # noqa: C901 - one loop over the message kinds, with reconnects
    base_url: str, job_id: str, token: str | None = None, out: TextIO | None = None
) -> str:
    """Show a job's live progress until it finishes; returns its final status.

    `base_url` is the API's (`http://host:8001`). Raises WatchError when the job is unknown,
    the token is refused, or the server stays unreachable.
    """
    view = ProgressLine(out if out is not None else sys.stdout)
    after: str | None = None
    failures = 0
    while True:
        url = socket_url(base_url, job_id, token, after)
        code: int | None = None
        reason = ""
        try:
            async with websockets.connect(url, open_timeout=10) as ws:
                failures = 0
                while True:
                    raw = await asyncio.wait_for(ws.recv(), IDLE_TIMEOUT_S)
                    message = json.loads(raw)
                    after = message.get("event_id") or after
                    match message.get("event"):
                        case "training_status":
                            view.status_message(message)
                        case "epoch_completed":
                            view.epoch_message(message)
                        case "warning":
                            view.note(f"warning: {message.get('message')}")
                        case "error":
                            reason = str(message.get("message"))
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            raise WatchError(
                f"the server refused the connection (HTTP {status}); check the token"
            ) from None
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = (exc.rcvd.reason if exc.rcvd is not None else "") or reason
        except (OSError, TimeoutError, websockets.InvalidHandshake):
            code = None
        if code == 1000:
            view.finish()
            return view.status or "unknown"
        if code in (4404, 4400):
            view.finish()
            raise WatchError(reason or f"cannot watch job {job_id!r}")
        failures += 1
        if failures > MAX_RETRIES:
            view.finish()
            raise WatchError(f"lost the connection to {base_url} and could not reconnect")
        await asyncio.sleep(min(0.1 * 2**failures, 5.0))

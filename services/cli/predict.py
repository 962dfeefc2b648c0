"""`heimdall predict JOB_ID FILE...`: the job's model on local recordings, through the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from shared import sigmfio


def upload_parts(files: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The multipart `files` parts of `files`; a `.sigmf-meta` brings its `.sigmf-data`."""
    parts: list[tuple[str, tuple[str, bytes, str]]] = []
    for path in files:
        paths = [path]
        if path.name.lower().endswith(sigmfio.META_SUFFIX):
            paths.append(sigmfio.data_path_for(path))
        for p in paths:
            try:
                content = p.read_bytes()
            except OSError as exc:
                typer.echo(f"error: cannot read {p}: {exc.strerror or exc}", err=True)
                raise typer.Exit(2) from None
            parts.append(("files", (p.name, content, "application/octet-stream")))
    return parts


def lines(body: dict[str, Any]) -> list[str]:
    """One line per file: its name, the predicted label and that label's probability."""
    out = []
    for pred in body["predictions"]:
        p = pred["probabilities"][pred["label"]]
        out.append(f"{pred['file']}\t{pred['label']}\t{p:.4f}")
    return out


def show(body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(body))
        return
    for line in lines(body):
        typer.echo(line)

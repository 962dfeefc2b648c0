"""What an EvaluationCompleted becomes in a tracker: scalars per split and per class, and the
whole evaluation as a JSON document."""

from __future__ import annotations

from typing import Any

import msgspec

from shared.events import EvaluationCompleted


def evaluation_scalars(event: EvaluationCompleted) -> list[tuple[str, float]]:
    """(name, value): `{phase}_macro_f1`, for the test set also `test_accuracy` and
    `test_loss` (validation's are the epoch's own `val_accuracy` and `val_loss`), and per class
    `{phase}_precision/{class}`, `{phase}_recall/{class}`, `{phase}_f1/{class}`."""
    p = event.phase
    out = [(f"{p}_macro_f1", event.macro_f1)]
    if p != "val":
        out.append((f"{p}_accuracy", event.accuracy))
        if event.loss is not None:
            out.append((f"{p}_loss", event.loss))
    for name, m in event.per_class.items():
        out += [
            (f"{p}_precision/{name}", m.precision),
            (f"{p}_recall/{name}", m.recall),
            (f"{p}_f1/{name}", m.f1),
        ]
    return [(key, float(value)) for key, value in out]


def evaluation_document(event: EvaluationCompleted) -> dict[str, Any]:
    """The evaluation as GET .../evaluation shows a split, with its phase and classes."""
    body: dict[str, Any] = msgspec.to_builtins(event)
    for name in ("type", "ts", "v", "job_id"):
        body.pop(name, None)
    return body


def artifact_name(event: EvaluationCompleted) -> str:
    return f"evaluation/{event.phase}-epoch-{event.epoch}.json"

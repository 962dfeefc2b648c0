"""Hostile input at the API's edge: JSON depth, content types, job names.

Every request body and WebSocket message is JSON decoded by msgspec, which recurses once per
nesting level: a 2 KB body of 1000 `[` exhausted Python's recursion limit (a 500 on REST, a
dropped WebSocket). `decode_json` and the `before_request` hook bound the depth *before* any
decoder sees the text. JSON routes take only `application/json` bodies, so that a cross-site
HTML form (which can send `text/plain` without a CORS preflight) cannot create or change a job.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import msgspec
from litestar import Request

from services.api.errors import UnsupportedMediaType
from shared.errors import InvalidInput

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted anywhere (a job body needs 3)."""

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_ANY = msgspec.json.Decoder()
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_KEEP = b"[]"
_DROP = bytes(c for c in range(256) if c not in _KEEP)

BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""Characters that reorder the text around them: a name holding one can display as another."""


def too_deep(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text `data` nests arrays/objects more than `limit` deep.

    Linear and done in C (bytes methods): string contents are cut out first (escaped
    backslashes and quotes, then everything between quotes), then innermost `[]` pairs are
    removed pass by pass; a valid text `limit` deep is empty after `limit` passes. Malformed
    text is not judged here beyond its unclosed openers; the decoder reports it.
    """
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    nesting = outside.translate(_BRACKETS).translate(None, _DROP)
    for _ in range(limit):
        reduced = nesting.replace(b"[]", b"")
        if reduced == nesting:
            break
        nesting = reduced
    return b"[]" in nesting or nesting.count(b"[") > limit


def decode_json(data: bytes | str, decoder: msgspec.json.Decoder[Any] = _ANY) -> Any:
    """JSON text → Python values (or `decoder`'s type), never deeper than `MAX_JSON_DEPTH`.

    Raises `InvalidInput` for text nested too deep and for text that is not JSON; a
    `decoder` with a type also raises msgspec's `ValidationError` for a value of the wrong
    shape (it names the field)."""
    if too_deep(data):
        raise InvalidInput(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def check_request(request: Request[Any, Any, Any]) -> None:
    """`before_request` for every HTTP route: JSON bodies only, and never too deep.

    A request with a body (or a declared content type) to a route that changes something must
    be `application/json`; a route that takes another kind of body says so with
    `opt={"body": "<media type prefix>"}` (multipart uploads, say).
    """
    if request.method not in UNSAFE_METHODS:
        return
    content_type = request.headers.get("content-type")
    expected = request.route_handler.opt.get("body")
    if expected is not None:
        if content_type and not content_type.lower().startswith(expected):
            raise UnsupportedMediaType(
                f"Content-Type must be {expected} (got {content_type[:80]!r})"
            )
        return
    has_body = request.headers.get("content-length", "0") not in ("", "0") or (
        "transfer-encoding" in request.headers
    )
    if content_type is None and not has_body:
        return  # a bare POST (cancel, pause...) carries nothing to misread
    if content_type is None or not _is_json(content_type):
        got = f"got {content_type[:80]!r}" if content_type else "none given"
        raise UnsupportedMediaType(f"Content-Type must be application/json ({got})")
    if too_deep(await request.body()):
        raise InvalidInput(f"request body: JSON nested deeper than {MAX_JSON_DEPTH} levels")


def job_name(name: str) -> str:
    """A job name as stored: surrounding whitespace trimmed; blank names, control characters
    (NUL, newlines, escapes...), bidirectional controls and line separators are refused, since
    names are shown in terminals, logs and browsers."""
    name = name.strip()
    if not name:
        raise InvalidInput("job_name: must not be blank", "job_name")
    for char in name:
        category = unicodedata.category(char)
        if char in BIDI_CONTROLS or category in ("Cc", "Cs", "Zl", "Zp"):
            kind = "a bidirectional control" if char in BIDI_CONTROLS else "a control character"
            raise InvalidInput(f"job_name: must not contain {kind} (U+{ord(char):04X})", "job_name")
    return name

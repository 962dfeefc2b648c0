"""The API's edge against hostile and careless input (issue 13): job names, content types,
tokens, event ids, JSON depth, downloads. The raw-request probes are in test_fuzz.py; these
check what each answer means: the field it names, what was (not) written, what the client
can do next."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aredis
import websockets
from litestar.testing import AsyncTestClient
from support import serve_api
from support.ws import make_job, recv_all, recv_json, ws_url

from services.api.app import create_app
from services.api.inputs import MAX_JSON_DEPTH, decode_json, too_deep
from shared.emit import AsyncEmitter
from shared.errors import InvalidInput
from shared.events import JobStarted
from shared.settings import Settings

JOBS = "/api/v1/training/jobs"
BODY = {"config": {"epochs": 1}}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as c:
        yield c


async def _jobs(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM training_jobs"))


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("evil\x00name", "control character (U+0000)"),
        ("   \t  ", "blank"),
        ("", "length >= 1"),
        ("invoice\u202egpj.exe", "bidirectional control (U+202E)"),
        ("isolate\u2066x\u2069", "bidirectional control (U+2066)"),
        ("two\nlines", "control character (U+000A)"),
        ("esc\x1b[31mred", "control character (U+001B)"),
        ("para\u2029graph", "control character (U+2029)"),
    ],
)
async def test_bad_job_names_are_refused_naming_job_name(
    client: AsyncTestClient[Any], db: asyncpg.Connection, name: str, words: str
) -> None:
    resp = await client.post(JOBS, json={"job_name": name, **BODY})
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["detail"].startswith("job_name") and words in body["detail"]
    assert "byte sequence" not in body["detail"]  # no database message
    assert await _jobs(db) == 0


async def test_job_names_are_trimmed_and_keep_their_characters(
    client: AsyncTestClient[Any],
) -> None:
    resp = await client.post(JOBS, json={"job_name": "  Ünïcode \u2013 ok 🚀 \u200d ", **BODY})
    assert resp.status_code == 201, resp.text
    assert resp.json()["job_name"] == "Ünïcode \u2013 ok 🚀 \u200d"


async def test_a_cross_site_form_post_creates_no_job(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    """What an HTML form on any web page can send without a CORS preflight."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        resp = await client.post(
            JOBS,
            content=b'{"job_name": "csrf", "config": {}}',
            headers={"content-type": content_type},
        )
        assert resp.status_code == 415, resp.text
        assert "application/json" in resp.json()["detail"]
    assert await _jobs(db) == 0
    ok = await client.post(JOBS, json={"job_name": "fine", **BODY})
    assert ok.status_code == 201
    cancel = await client.post(f"{JOBS}/{ok.json()['id']}/cancel")  # a bare POST stays fine
    assert cancel.status_code == 200, cancel.text


async def test_token_only_in_the_header_on_rest_and_401_says_bearer(settings: Settings) -> None:
    secured = replace(settings, api_token="s3cret")
    async with AsyncTestClient(app=create_app(secured)) as c:
        for refused in [
            await c.get(JOBS),
            await c.get(JOBS, params={"token": "s3cret"}),
            await c.get(JOBS, headers={"authorization": "Bearer wrong"}),
        ]:
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
        assert (await c.get(JOBS, headers={"authorization": "Bearer s3cret"})).status_code == 200


async def test_downloads_are_octet_streams(
    client: AsyncTestClient[Any], settings: Settings, db: asyncpg.Connection
) -> None:
    job_id = (await client.post(JOBS, json={"job_name": "art", **BODY})).json()["id"]
    job_dir = settings.artifacts_dir / job_id
    job_dir.mkdir(parents=True)
    (job_dir / "best.pt").write_bytes(b"checkpoint bytes")
    (job_dir / "model.onnx").write_bytes(b"onnx bytes")
    await db.execute(
        "UPDATE training_jobs SET checkpoint_path = $2, onnx_model_path = $3 WHERE id = $1",
        uuid.UUID(job_id),
        "best.pt",
        "model.onnx",
    )
    for kind, content in [("checkpoint", b"checkpoint bytes"), ("onnx", b"onnx bytes")]:
        resp = await client.get(f"{JOBS}/{job_id}/artifacts/{kind}")
        assert resp.status_code == 200 and resp.content == content
        assert resp.headers["content-type"] == "application/octet-stream"
        assert "attachment" in resp.headers["content-disposition"]


async def test_event_ids_beyond_the_database_columns_still_page(
    client: AsyncTestClient[Any], redis_client: aredis.Redis
) -> None:
    """`1-(2^64-1)` is a valid Redis id above every stored sequence: everything after
    millisecond 1 comes back; it used to leak asyncpg's "invalid input for query argument"."""
    job_id = (await client.post(JOBS, json={"job_name": "ids", **BODY})).json()["id"]
    await AsyncEmitter(redis_client).emit(JobStarted(job_id=job_id, total_batches=1))
    events = f"{JOBS}/{job_id}/events"
    everything = (await client.get(events)).json()["events"]
    assert len(everything) == 2
    beyond = await client.get(events, params={"after": f"1-{2**64 - 1}"})
    assert beyond.status_code == 200 and beyond.json()["events"] == everything
    last = everything[-1]["event_id"]
    tail = (await client.get(events, params={"after": last})).json()
    assert tail["events"] == [] and tail["last_event_id"] == last
    bad = await client.get(events, params={"after": "1-99999999999999999999"})
    assert bad.status_code == 400 and bad.json()["extra"] == {"field": "after"}
    assert "query argument" not in bad.text


async def test_websocket_after_beyond_the_database_columns_resumes(
    settings: Settings, db: asyncpg.Connection, redis_client: aredis.Redis
) -> None:
    """Once a close with 1011 "server error"; now the backlog after it, like any id."""
    job = await make_job(db, epochs=2)
    first = await AsyncEmitter(redis_client).emit(JobStarted(job_id=job, total_batches=4))
    async with serve_api(settings) as base:
        async with websockets.connect(ws_url(base, job, after=f"1-{2**64 - 1}")) as ws:
            assert (await recv_json(ws))["event"] == "connected"
            status = await recv_json(ws)
            assert status["event"] == "training_status"
            while status.get("event_id") != first:
                status = await recv_json(ws)
            await ws.send('{"event": "ping"}')
            assert (await recv_json(ws))["event"] == "pong"
        async with websockets.connect(ws_url(base, job, after="1-99999999999999999999")) as ws:
            messages = await recv_all(ws)
            assert ws.close_code == 4400
            assert "2^64-1" in messages[0]["message"] and "2^64-1" in (ws.close_reason or "")


def test_depth_bound() -> None:
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert not too_deep(at_limit) and decode_json(at_limit)
    assert too_deep("[" + at_limit + "]")
    assert too_deep('{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1))
    assert too_deep("[" * 10_000)  # unclosed: still too deep, never handed to the decoder
    # Brackets inside strings, escaped quotes and backslashes do not nest.
    assert not too_deep('["' + "[{" * 500 + '", "\\"[[[[", "\\\\"]')
    assert not too_deep('[{"a": [1, 2, {"b": []}]}]' * 1000)
    with pytest.raises(InvalidInput, match="nested deeper than 32"):
        decode_json("[" * 1100)
    with pytest.raises(InvalidInput, match="malformed JSON"):
        decode_json(b"\xff\xfe")

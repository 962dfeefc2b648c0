"""The dashboard in a real headless Chromium, against a real API, recorder, Valkey and PostgreSQL.

No worker runs: the tests emit a worker's events themselves, and the recorder process turns
them into job rows and metrics, exactly as in production. Chromium comes from Debian (see
scripts/browser-setup); playwright only drives it.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aredis
from support import serve_api
from support.dashboard import (
    CHROMIUM_ARGS,
    REPO,
    find_chromium,
    recorder_process,
    train,
)

from shared.config import TrainingConfig
from shared.datasets import write_synthetic
from shared.emit import AsyncEmitter
from shared.events import JobCompleted, JobFailed
from shared.settings import Settings
from shared.storage import open_store

playwright_api = pytest.importorskip(
    "playwright.async_api",
    reason="the playwright client is not installed (scripts/browser-setup installs it)",
)
CHROMIUM = find_chromium()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium at /usr/bin/chromium (scripts/browser-setup installs Debian's"
        " package when run as root) and HEIMDALL_CHROMIUM is unset",
    ),
]

JOBS = "/api/v1/training/jobs"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TIMEOUT_MS = 20_000
MAX_SCREENSHOT_BYTES = 300_000

Page = Any  # playwright.async_api.Page; the module is imported only when available


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    """API and recorder on this test's stores; yields the API's base URL."""
    async with recorder_process(settings, tmp_path / "recorder.log"), serve_api(settings) as base:
        yield base


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Page]:
    """A fresh browser context; any uncaught JavaScript error fails the test."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    await context.close()
    assert errors == [], f"JavaScript errors: {errors}"


@pytest.fixture
async def http(stack: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack, timeout=10) as client:
        yield client


@pytest.fixture
def emitter(redis_client: aredis.Redis) -> AsyncEmitter:
    return AsyncEmitter(redis_client)


async def create_job(http: httpx.AsyncClient, name: str, **config: Any) -> str:
    config = {"model_architecture": "convnext_atto", "accelerator": "cpu", **config}
    resp = await http.post(JOBS, json={"job_name": name, "config": config})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 20) -> Any:
    """Polls an async check until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def status_of(http: httpx.AsyncClient, job_id: str) -> str:
    return str((await http.get(f"{JOBS}/{job_id}")).json()["job"]["status"])


async def chart_points(page: Page, chart: str, n: int) -> None:
    await page.wait_for_selector(f'[data-chart="{chart}"][data-points="{n}"]')


async def test_create_a_job_through_the_form_and_watch_it_train(
    page: Page, stack: str, http: httpx.AsyncClient, emitter: AsyncEmitter, settings: Settings
) -> None:
    await page.goto(f"{stack}/#/new")
    for name in TrainingConfig.__struct_fields__:
        assert await page.locator(f"#f-{name}").count() == 1, f"no input for config.{name}"
    await page.fill("#f-job_name", "from the form")
    await page.select_option("#f-model_architecture", "convnext_atto")
    await page.select_option("#f-accelerator", "cpu")
    await page.fill("#f-epochs", "3")
    await page.fill("#f-learning_rate", "0.003")
    await page.uncheck("#f-pretrained")
    await page.click("button[type=submit]")
    await page.wait_for_url(re.compile(rf"#/jobs/{UUID}$"))
    job_id = page.url.rsplit("/", 1)[1]

    created = (await http.get(f"{JOBS}/{job_id}")).json()["job"]
    assert created["job_name"] == "from the form"
    assert created["config"]["epochs"] == 3 and created["config"]["learning_rate"] == 0.003
    assert created["config"]["model_architecture"] == "convnext_atto"
    assert created["config"]["pretrained"] is False
    assert created["config"]["batch_size"] == 32  # untouched fields keep their defaults

    await page.wait_for_selector('.connection[data-state="live"]')
    await train(emitter, job_id, range(1, 1), total=3)  # started, no epoch yet
    await page.wait_for_selector('.badge[data-status="running"]')
    for epoch in (1, 2, 3):
        await train(emitter, job_id, range(epoch, epoch + 1), total=3, started=False)
        await chart_points(page, "loss", epoch)
        await chart_points(page, "accuracy", epoch)
        await chart_points(page, "lr", epoch)
    assert int(await page.get_attribute('[data-chart="batch"]', "data-points") or 0) >= 3
    assert "epoch 3/3" in await page.inner_text(".progress-block")
    job_dir = settings.artifacts_dir / job_id
    job_dir.mkdir(parents=True)
    (job_dir / "model.onnx").write_bytes(b"onnx bytes")
    (job_dir / "best.pt").write_bytes(b"checkpoint bytes")
    await emitter.emit(
        JobCompleted(
            job_id=job_id, epochs_run=3, checkpoint_path="best.pt", onnx_model_path="model.onnx"
        )
    )
    await page.wait_for_selector('.badge[data-status="completed"]')
    await page.wait_for_selector('.connection[data-state="closed"]')
    assert "100.0 %" in await page.inner_text(".progress-block")
    onnx = await page.get_attribute("a[data-artifact=onnx]", "href")
    assert onnx == f"{JOBS}/{job_id}/artifacts/onnx"
    assert (await http.get(onnx)).content == b"onnx bytes"
    assert await page.locator("a[data-artifact=checkpoint]").count() == 1
    # A reload draws the same curves from the REST endpoints alone.
    await page.reload()
    await chart_points(page, "loss", 3)
    await page.wait_for_selector('[data-chart="batch"]:not([data-points="0"])')


async def test_cancel_and_delete_buttons(
    page: Page, stack: str, http: httpx.AsyncClient, emitter: AsyncEmitter
) -> None:
    job_id = await create_job(http, "to cancel", epochs=50)
    await page.goto(f"{stack}/#/jobs/{job_id}")
    await page.wait_for_selector('.connection[data-state="live"]')
    await train(emitter, job_id, range(1, 3), total=50)
    await chart_points(page, "loss", 2)

    await page.click("button[data-action=cancel]")
    await page.wait_for_selector('.badge[data-status="cancelled"]')
    await page.wait_for_selector('.connection[data-state="closed"]')
    assert await status_of(http, job_id) == "cancelled"
    assert await page.is_disabled("button[data-action=cancel]")

    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click("button[data-action=delete]")
    await page.wait_for_url(re.compile(r"#/jobs$"))
    assert (await http.get(f"{JOBS}/{job_id}")).status_code == 404


async def test_ranges_are_enforced_and_server_errors_sit_next_to_their_field(
    page: Page, stack: str, http: httpx.AsyncClient
) -> None:
    await page.goto(f"{stack}/#/new")
    await page.fill("#f-job_name", "bad config")
    assert await page.get_attribute("#f-batch_size", "max") == "512"
    assert await page.get_attribute("#f-dropout_rate", "max") == "0.9"
    await page.fill("#f-batch_size", "1000")
    await page.click("button[type=submit]")
    assert await page.eval_on_selector("#f-batch_size", "el => el.validity.rangeOverflow")
    assert "#/new" in page.url

    # Each value is in range, but together they break a rule only the server knows.
    await page.fill("#f-batch_size", "64")
    await page.fill("#f-n_fft", "256")
    await page.fill("#f-hop_length", "512")
    await page.click("button[type=submit]")
    error = page.locator('.field[data-field="hop_length"] .field-error')
    await error.wait_for()
    assert "hop_length (512) must not exceed n_fft (256)" in await error.inner_text()
    assert await page.locator(".field.invalid").count() == 1
    assert (await http.get(JOBS)).json()["total"] == 0


async def test_reconnects_and_resumes_without_losing_an_epoch(
    page: Page, settings: Settings, tmp_path: Path, emitter: AsyncEmitter
) -> None:
    async with recorder_process(settings, tmp_path / "recorder.log"):
        async with serve_api(settings) as base:
            port = int(base.rsplit(":", 1)[1])
            async with httpx.AsyncClient(base_url=base) as http:
                job_id = await create_job(http, "flaky network", epochs=6)
            await page.goto(f"{base}/#/jobs/{job_id}")
            await page.wait_for_selector('.connection[data-state="live"]')
            await train(emitter, job_id, range(1, 3), total=6)
            await chart_points(page, "loss", 2)
        # The API is down: these epochs happen while the page cannot hear about them.
        await page.wait_for_selector('.connection[data-state="retrying"]')
        await train(emitter, job_id, range(3, 5), total=6, started=False)
        async with serve_api(settings, port=port):
            await chart_points(page, "loss", 4)
            await page.wait_for_selector('.connection[data-state="live"]')
            await train(emitter, job_id, range(5, 7), total=6, started=False, complete=True)
            await chart_points(page, "loss", 6)
            await page.wait_for_selector('.badge[data-status="completed"]')


async def test_job_list_filters_and_pages(page: Page, stack: str, http: httpx.AsyncClient) -> None:
    ids = [await create_job(http, f"job {i:02d}", epochs=5) for i in range(17)]
    for job_id in ids[:2]:
        assert (await http.post(f"{JOBS}/{job_id}/cancel")).status_code == 200
    await page.goto(f"{stack}/#/jobs")
    await page.wait_for_selector('[data-range="1-15/17"]')
    assert await page.locator("table.jobs tbody tr").count() == 15
    await page.click("button[data-page=next]")
    await page.wait_for_selector('[data-range="16-17/17"]')
    assert "page=2" in page.url
    await page.select_option("select[name=status]", "cancelled")
    await page.wait_for_selector('[data-range="1-2/2"]')
    assert await page.locator('table.jobs .badge[data-status="cancelled"]').count() == 2


async def test_compare_overlays_two_jobs(
    page: Page, stack: str, http: httpx.AsyncClient, emitter: AsyncEmitter
) -> None:
    first = await create_job(http, "lr 3e-3", epochs=5)
    second = await create_job(http, "lr 5e-4", epochs=4)
    await train(emitter, first, range(1, 6), total=5, seed=1, complete=True)
    await train(emitter, second, range(1, 5), total=4, seed=2, complete=True)
    for job_id, epochs in ((first, 5), (second, 4)):
        await until(partial(_recorded, http, job_id, epochs), f"job {job_id} recorded")
    await page.goto(f"{stack}/#/jobs")
    for name in ("lr 3e-3", "lr 5e-4"):
        await page.check(f"[aria-label='select {name}']")
    await page.click("text=Compare selected (2)")
    await page.wait_for_url(re.compile(r"#/compare\?ids="))
    await chart_points(page, "val_loss", 5)
    await chart_points(page, "val_accuracy", 5)
    legend = await page.text_content('[data-chart="val_loss"] .u-legend') or ""
    assert "lr 3e-3" in legend and "lr 5e-4" in legend


async def _completed(http: httpx.AsyncClient, job_id: str) -> bool:
    return await status_of(http, job_id) == "completed"


async def _recorded(http: httpx.AsyncClient, job_id: str, epochs: int) -> bool:
    """Completed and every epoch's row in the database (the job's status comes from its live
    state, which runs ahead of the recorder; the compare view reads the metrics once)."""
    rows = (await http.get(f"{JOBS}/{job_id}/metrics?phase=epoch")).json()["metrics"]
    return await _completed(http, job_id) and len(rows) == epochs


async def test_token_is_asked_for_kept_and_sent(
    page: Page, settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    """With HEIMDALL_API_TOKEN set, a 401 brings up the token dialog; the token is then kept
    and sent as a bearer header (REST, downloads) and as ?token= (WebSocket only)."""
    secured = replace(settings, api_token="s3cret-token")
    async with serve_api(secured) as base:
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": "Bearer s3cret-token"}
        ) as http:
            job_id = await create_job(http, "secured job", epochs=3)
        await page.goto(f"{base}/#/jobs/{job_id}")
        await page.wait_for_selector("#token-dialog[open]")
        await page.fill("#token-dialog input[name=token]", "s3cret-token")
        await page.click("#token-dialog button[value=ok]")
        await page.wait_for_selector("h1:has-text('secured job')")
        await page.wait_for_selector('.connection[data-state="live"]')
        stored = await page.evaluate("() => localStorage.getItem('heimdall.token')")
        assert stored == "s3cret-token"
        await page.reload()
        await page.wait_for_selector('.connection[data-state="live"]')
        assert await page.locator("#token-dialog[open]").count() == 0
        # A download is a fetch with the header: REST routes refuse ?token=.
        job_dir = secured.artifacts_dir / job_id
        job_dir.mkdir(parents=True)
        (job_dir / "model.onnx").write_bytes(b"onnx bytes")
        await db.execute(
            "UPDATE training_jobs SET onnx_model_path = $2 WHERE id = $1::uuid",
            job_id,
            str(job_dir / "model.onnx"),
        )
        await page.reload()
        async with page.expect_download() as info:
            await page.click("a[data-artifact=onnx]")
        download = await info.value
        saved = Path(await download.path())
        assert await asyncio.to_thread(saved.read_bytes) == b"onnx bytes"
        assert download.suggested_filename == f"{job_id}-model.onnx"


async def test_screenshots(
    page: Page,
    stack: str,
    http: httpx.AsyncClient,
    emitter: AsyncEmitter,
    db: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """The job list and a job page with its charts, as docs/screenshots/*.png when
    HEIMDALL_SCREENSHOTS=1 (otherwise into a temporary dir, to check they render)."""
    out = REPO / "docs" / "screenshots" if os.environ.get("HEIMDALL_SCREENSHOTS") else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    await write_synthetic(db, open_store(settings), "default", 140, seed=7, duration_s=0.05)
    done = await create_job(http, "atto · lr 3e-3 · cosine", epochs=30, learning_rate=3e-3)
    await train(emitter, done, range(1, 31), total=30, batches=12, seed=3, complete=True)
    running = await create_job(
        http, "atto · lr 5e-4 · step", epochs=40, lr_scheduler="step", learning_rate=5e-4
    )
    await train(emitter, running, range(1, 15), total=40, batches=12, seed=4, lr=5e-4)
    failed = await create_job(
        http, "tiny · pretrained", epochs=20, model_architecture="convnext_tiny"
    )
    await emitter.emit(
        JobFailed(
            job_id=failed,
            error_message="pretrained weights for convnext_tiny could not be loaded (no network,"
            " no local cache); set pretrained=false or put the weights in the timm cache",
        )
    )
    await create_job(http, "nano · batch 64", epochs=25, model_architecture="convnext_nano")
    await until(partial(_completed, http, done), "the finished job recorded")
    await until(partial(_is, http, failed, "failed"), "the failed job recorded")

    await page.goto(f"{stack}/#/jobs")
    await page.wait_for_selector('.badge[data-status="failed"]')
    await page.wait_for_selector('.dataset[data-dataset="default"]')
    await page.screenshot(path=str(out / "job-list.png"))

    await page.goto(f"{stack}/#/jobs/{running}")
    await chart_points(page, "loss", 14)
    await page.wait_for_selector('.connection[data-state="live"]')
    await page.screenshot(path=str(out / "job-page.png"), full_page=True)

    await page.goto(f"{stack}/#/jobs/{failed}")
    failure = page.locator(".error-box.failure")
    assert "could not be loaded" in await failure.inner_text()
    assert await page.locator(".connection").get_attribute("data-state") == "idle"

    await page.goto(f"{stack}/#/compare?ids={done},{running}")
    await chart_points(page, "val_loss", 30)
    await page.screenshot(path=str(out / "compare.png"))

    for name in ("job-list.png", "job-page.png", "compare.png"):
        size = (out / name).stat().st_size
        assert 10_000 < size < MAX_SCREENSHOT_BYTES, (name, size)


async def _is(http: httpx.AsyncClient, job_id: str, status: str) -> bool:
    return await status_of(http, job_id) == status


async def test_new_job_defaults_fit_a_cpu_worker_and_the_job_completes(
    page: Page,
    stack: str,
    http: httpx.AsyncClient,
    settings: Settings,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    """On a CPU-only system the form starts from what the worker can run; unchanged, it makes
    a job that trains to the end on this machine. The seed's defaults stay one click away."""
    from support.worker import worker_process

    await write_synthetic(db, open_store(settings), "default", 200, seed=3, duration_s=0.25)
    with worker_process(settings, tmp_path / "worker.log") as worker:

        async def connected() -> bool:
            return bool((await http.get("/api/v1/workers")).json()["workers"])

        await until(connected, f"the worker to connect ({worker.log})", timeout_s=120)
        await page.goto(f"{stack}/#/workers")
        await page.wait_for_selector(f'tr[data-worker$=":{worker.proc.pid}"]')
        assert "CPU" in await page.inner_text('td[data-col="devices"]')

        await page.goto(f"{stack}/#/new")
        note = await page.wait_for_selector('.defaults-note[data-defaults="fit"]')
        assert note is not None
        text = await note.inner_text()
        assert "CPU only" in text and 'accelerator "cpu"' in text, text
        assert await page.input_value("#f-accelerator") == "cpu"
        assert await page.input_value("#f-model_architecture") == "convnext_atto"
        assert not await page.is_checked("#f-pretrained")

        await page.click("a[data-action=seed-defaults]")
        await page.wait_for_selector('.defaults-note[data-defaults="seed"]')
        assert await page.input_value("#f-accelerator") == "gpu"
        assert await page.input_value("#f-model_architecture") == "convnext_tiny"
        assert await page.is_checked("#f-pretrained")
        await page.click(".defaults-note a")
        await page.wait_for_selector('.defaults-note[data-defaults="fit"]')

        await page.fill("#f-job_name", "machine defaults")
        await page.click("button[type=submit]")
        await page.wait_for_url(re.compile(rf"#/jobs/{UUID}$"))
        job_id = page.url.rsplit("/", 1)[1]
        await page.wait_for_selector('.badge[data-status="completed"]', timeout=240_000)
        job = (await http.get(f"{JOBS}/{job_id}")).json()["job"]
        assert job["status"] == "completed", job
        assert job["config"]["accelerator"] == "cpu" and job["config"]["pretrained"] is False


async def test_queued_then_failed_job_page_says_what_it_has(
    page: Page, stack: str, http: httpx.AsyncClient, emitter: AsyncEmitter
) -> None:
    job_id = await create_job(http, "fails at once")
    await page.goto(f"{stack}/#/jobs/{job_id}")
    info = await page.wait_for_selector('.queue-info[data-queue-position="1"]')
    assert info is not None
    assert "position 1 of 1" in await info.inner_text()
    assert "none is connected" in await info.inner_text()

    await emitter.emit(JobFailed(job_id=job_id, error_message="no GPU here"))
    await page.wait_for_selector('.badge[data-status="failed"]')
    await page.wait_for_selector(".no-data:not([hidden])")
    assert "failed before the first epoch" in await page.inner_text(".no-data")
    assert await page.is_hidden(".charts")
    assert await page.is_hidden(".queue-info")
    stats = await page.inner_text(".stats")
    assert "?" not in stats and "—" not in stats, stats
    assert "no GPU here" in await page.inner_text(".failure")

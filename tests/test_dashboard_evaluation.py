"""The job page's evaluation panel and "Try the model" in a real headless Chromium.

A real model: the test trains one (in this process, convnext_atto on short synthetic signals)
for a job created through the API, and emits the training's own events to the job's stream as
a worker would; the recorder process stores them, the page shows them live. The prediction
comes from a file dropped on the page, run by the API's onnxruntime on that model.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aredis
import torch
from support import TINY, serve_api, synthetic_recordings
from support.dashboard import CHROMIUM_ARGS, find_chromium, recorder_process

from services.worker.progress import ListSink, NeverStop
from services.worker.run import TrainSpec
from services.worker.trainer import train
from shared.config import TrainingConfig
from shared.emit import AsyncEmitter
from shared.events import EvaluationCompleted
from shared.settings import Settings
from shared.signals import read_signal
from shared.wavio import write_wav

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright not installed")
CHROMIUM = find_chromium()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (see scripts/browser-setup)"),
]

JOBS = "/api/v1/training/jobs"
CONFIG: dict[str, Any] = {**TINY, "epochs": 2, "seed": 3, "test_split": 0.2}


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    async with recorder_process(settings, tmp_path / "recorder.log"), serve_api(settings) as base:
        yield base


@pytest.fixture
async def page(stack: str) -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 1400})
        page = await context.new_page()
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        await context.close()
        await browser.close()
        assert errors == [], f"JavaScript errors: {errors}"


def _train(job_id: str, settings: Settings, root: Path) -> tuple[list[Any], Any]:
    torch.set_num_threads(1)
    recordings = synthetic_recordings(root, 70)
    spec = TrainSpec(
        job_id=job_id,
        config=TrainingConfig(**CONFIG),
        recordings=recordings,
        out_dir=settings.artifacts_dir / job_id,
        progress_interval_s=0.0,
    )
    sink = ListSink()
    result = train(spec, sink, NeverStop())
    return sink.events, result.completed


async def test_heat_map_live_and_a_prediction_from_a_dropped_file(
    page: Any, stack: str, settings: Settings, redis_client: aredis.Redis, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=stack, timeout=30) as http:
        created = await http.post(JOBS, json={"job_name": "eval", "config": CONFIG})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        events, completed = await asyncio.to_thread(_train, job_id, settings, tmp_path / "rec")

        await page.goto(f"{stack}/#/jobs/{job_id}")
        await page.wait_for_selector('.connection[data-state="live"]')
        emitter = AsyncEmitter(redis_client)
        for event in events:
            await emitter.emit(event)
        await emitter.emit(completed)

        val = [e for e in events if isinstance(e, EvaluationCompleted) and e.phase == "val"]
        test = next(e for e in events if isinstance(e, EvaluationCompleted) and e.phase == "test")
        # Live: the latest validation's heat map, cell by cell as the worker computed it.
        latest = f'table[data-heatmap="val"][data-epoch="{val[-1].epoch}"]'
        await page.wait_for_selector(latest)
        cells = await page.eval_on_selector_all(
            f"{latest} td", "tds => tds.map(td => Number(td.dataset.count))"
        )
        assert cells == [n for row in val[-1].confusion_matrix for n in row]
        assert await page.locator("table[data-per-class] tbody tr").count() == len(test.classes)
        await page.wait_for_selector("svg.snr-curve")

        # The test set, then an earlier epoch, from the select.
        await page.wait_for_selector(
            'select[data-eval-choice] option[value="test"]', state="attached"
        )
        await page.select_option("select[data-eval-choice]", "test")
        await page.wait_for_selector(f'table[data-heatmap="test"][data-epoch="{test.epoch}"]')
        cells = await page.eval_on_selector_all(
            'table[data-heatmap="test"] td', "tds => tds.map(td => Number(td.dataset.count))"
        )
        assert sum(cells) == test.samples
        await page.select_option("select[data-eval-choice]", "1")
        await page.wait_for_selector('table[data-heatmap="val"][data-epoch="1"]')

        # Try the model: a WAV dropped on the box.
        # The job's recordings are read as real (one channel), so is the dropped file.
        samples, rate = read_signal(next(iter(sorted((tmp_path / "rec").rglob("*.wav")))))
        wav = tmp_path / "dropped.wav"
        write_wav(wav, samples[0], rate)
        want = await http.post(
            f"{JOBS}/{job_id}/predict", files=[("files", (wav.name, wav.read_bytes(), "audio/wav"))]
        )
        assert want.status_code == 200, want.text
        label = want.json()["predictions"][0]["label"]
        await page.evaluate(
            """([name, b64]) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const data = new DataTransfer();
                data.items.add(new File([bytes], name, { type: "audio/wav" }));
                const box = document.querySelector("[data-drop-box]");
                box.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true }));
            }""",
            [wav.name, base64.b64encode(wav.read_bytes()).decode()],
        )
        row = page.locator(f'.prediction-row[data-file="{wav.name}"]')
        await row.wait_for()
        assert await row.get_attribute("data-label") == label

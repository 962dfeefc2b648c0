"""The one settings loader (shared/env.py): every field of every settings class is read from a
variable derived from its declaration, with one yes/no vocabulary; a bad value names the
variable and the expected form; secrets stay out of `repr` and of error messages."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Literal

import pytest

from services.recorder.settings import RecorderSettings
from services.tracking.settings import TrackingSettings
from shared.env import EnvSettings, variables
from shared.errors import ConfigurationError
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CLASSES = [Settings, RecorderSettings, TrackingSettings]


def _fields(cls: type[Any]) -> list[tuple[type[Any], str, Any, Any]]:
    hints = typing.get_type_hints(cls)
    return [(cls, f.name, hints[f.name], getattr(cls(), f.name)) for f in dataclasses.fields(cls)]


ALL_FIELDS = [item for cls in CLASSES for item in _fields(cls)]
FIELD_IDS = [f"{cls.__name__}.{name}" for cls, name, *_ in ALL_FIELDS]


def _plain(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, type(int | None)) else hint


FORMED = {"storage_url": "s3://bucket/prefix"}
"""Text fields whose value has a form of its own (checked when the settings load)."""


def _unlike(hint: Any, default: Any, name: str = "") -> tuple[str, Any]:
    """A variable's text that differs from the default, and the value it must give."""
    if name in FORMED:
        return FORMED[name], FORMED[name]
    kind = _plain(hint)
    if kind is bool:
        return ("no", False) if default else ("yes", True)
    if kind is int:
        return str(default + 1), default + 1
    if kind is float:
        return "2.5", 2.5
    if kind is Path:
        return "/tmp/elsewhere", Path("/tmp/elsewhere")
    if typing.get_origin(kind) is tuple:
        return " a, b ,", ("a", "b")
    if typing.get_origin(kind) is Literal:
        choice = next(c for c in typing.get_args(kind) if c != default)
        return choice.lower(), choice
    return "something-else", "something-else"


@pytest.mark.parametrize(
    ("cls", "name", "hint", "default"),
    ALL_FIELDS,
    ids=[f"{c.__name__}.{n}" for c, n, *_ in ALL_FIELDS],
)
def test_every_field_is_read_from_its_variable(
    cls: type[Any], name: str, hint: Any, default: Any
) -> None:
    text, expected = _unlike(hint, default, name)
    loaded = cls.from_env({variables(cls)[name]: text})
    assert getattr(loaded, name) == expected
    assert loaded == dataclasses.replace(cls(), **{name: expected})


def test_existing_variable_names_keep_working() -> None:
    assert variables(Settings)["redis_url"] == "HEIMDALL_REDIS_URL"
    assert variables(Settings)["log_json"] == "HEIMDALL_LOG_JSON"
    assert variables(RecorderSettings)["batch_size"] == "HEIMDALL_RECORDER_BATCH_SIZE"
    assert variables(RecorderSettings)["metrics_retention_days"] == (
        "HEIMDALL_METRICS_RETENTION_DAYS"
    )
    assert variables(TrackingSettings) == {
        "tensorboard": "HEIMDALL_TENSORBOARD",
        "mlflow_uri": "HEIMDALL_MLFLOW_TRACKING_URI",
        "mlflow_timeout_s": "HEIMDALL_MLFLOW_TIMEOUT_S",
    }


def test_unset_and_empty_variables_keep_the_defaults() -> None:
    for cls in CLASSES:
        assert cls.from_env({}) == cls()
        assert cls.from_env(dict.fromkeys(variables(cls).values(), "  ")) == cls()


def test_a_malformed_storage_url_names_the_variable() -> None:
    for bad in ("ftp://host/x", "file://relative", "s3://", "bucket/prefix"):
        with pytest.raises(ConfigurationError, match="HEIMDALL_STORAGE_URL"):
            Settings.from_env({"HEIMDALL_STORAGE_URL": bad})
    assert Settings.from_env({"HEIMDALL_STORAGE_URL": "file:///srv/blobs"}).storage_url


@pytest.mark.parametrize("word", ["1", "true", "YES", "On"])
def test_one_yes_vocabulary(word: str) -> None:
    assert Settings.from_env({"HEIMDALL_LOG_JSON": word}).log_json is True
    assert TrackingSettings.from_env({"HEIMDALL_TENSORBOARD": word}).tensorboard is True


@pytest.mark.parametrize("word", ["0", "false", "No", "OFF"])
def test_one_no_vocabulary(word: str) -> None:
    assert Settings.from_env({"HEIMDALL_LOG_JSON": word}).log_json is False
    assert TrackingSettings.from_env({"HEIMDALL_TENSORBOARD": word}).tensorboard is False


@pytest.mark.parametrize(
    ("cls", "variable", "value", "form"),
    [
        (Settings, "HEIMDALL_PORT", "80a", "a whole number"),
        (Settings, "HEIMDALL_PORT", "70000", "<= 65535"),
        (Settings, "HEIMDALL_HEARTBEAT_S", "soon", "a finite number"),
        (Settings, "HEIMDALL_LEASE_TTL_S", "nan", "a finite number"),
        (Settings, "HEIMDALL_LOG_JSON", "maybe", "yes/no"),
        (Settings, "HEIMDALL_LOG_LEVEL", "loud", "one of DEBUG, INFO"),
        (RecorderSettings, "HEIMDALL_RECORDER_BATCH_SIZE", "1.5", "a whole number"),
        (RecorderSettings, "HEIMDALL_METRICS_RETENTION_DAYS", "forever", "a finite number"),
        (TrackingSettings, "HEIMDALL_TENSORBOARD", "sometimes", "yes/no"),
        (TrackingSettings, "HEIMDALL_MLFLOW_TIMEOUT_S", "10s", "a finite number"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_form(
    cls: type[EnvSettings], variable: str, value: str, form: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        cls.from_env({variable: value})
    assert caught.value.variable == variable
    assert variable in caught.value.detail and repr(value) in caught.value.detail
    assert form in caught.value.detail


@dataclasses.dataclass(frozen=True, slots=True)
class _Declared(EnvSettings):
    """A settings class as another helper would add one: declarations only."""

    env_prefix: typing.ClassVar[str] = "HEIMDALL_TEST_"

    workers_per_gpu: int = 1
    """A plain field."""

    pin: int = dataclasses.field(default=0, repr=False)
    """A secret."""


def test_a_new_field_needs_only_its_declaration() -> None:
    assert _Declared.from_env({"HEIMDALL_TEST_WORKERS_PER_GPU": "4"}).workers_per_gpu == 4


def test_secrets_stay_out_of_repr_and_errors() -> None:
    settings = Settings.from_env(
        {
            "HEIMDALL_REDIS_URL": "redis://:hunter2@cache:6379/0",
            "HEIMDALL_DATABASE_URL": "postgresql://u:hunter2@db/heimdall",
            "HEIMDALL_API_TOKEN": "hunter2",
        }
    )
    assert settings.redis_url == "redis://:hunter2@cache:6379/0"
    assert "hunter2" not in repr(settings)
    with pytest.raises(ConfigurationError) as caught:
        _Declared.from_env({"HEIMDALL_TEST_PIN": "hunter2"})
    assert "HEIMDALL_TEST_PIN" in str(caught.value) and "hunter2" not in str(caught.value)


@pytest.mark.parametrize("command", ["api", "worker", "recorder"])
def test_the_cli_reports_a_bad_variable_without_a_traceback(command: str, tmp_path: Path) -> None:
    env = {**os.environ, "HEIMDALL_DATA_DIR": str(tmp_path), "HEIMDALL_LEASE_TTL_S": "ten"}
    if command == "worker":
        env["HEIMDALL_LEASE_TTL_S"] = "10"
        env["HEIMDALL_MLFLOW_TIMEOUT_S"] = "ten"
    if command == "recorder":
        env["HEIMDALL_LEASE_TTL_S"] = "10"
        env["HEIMDALL_RECORDER_BLOCK_MS"] = "ten"
    out = subprocess.run(
        [sys.executable, "-m", "services.cli.main", command],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "'ten' is not valid" in out.stderr and "HEIMDALL_" in out.stderr
    assert not any(tmp_path.iterdir()), "nothing may start on a bad setting"

"""One loader from the environment to typed settings, shared by every settings class.

A settings class is a frozen dataclass that inherits `EnvSettings`. Each field is read from
`<env_prefix><FIELD NAME>` (upper-cased) — a new setting needs only its declaration and
docstring — or from the variable named in the field's metadata (`metadata={"env": "..."}`)
where an older name must keep working. Unset or empty variables keep the field's default.

Values are converted by msgspec (`convert` with `strict=False`, which parses numbers from
strings) against the declared types, so constraints written as `Annotated[int, Meta(ge=0)]`
and `Literal[...]` choices are checked too. Yes/no fields take one vocabulary everywhere:
1/0, true/false, yes/no, on/off. Tuple fields take comma-separated values. A bad value raises
`ConfigurationError` naming the variable and the expected form; fields declared with
`field(repr=False)` are secrets, kept out of `repr` and out of error messages.

Settings are loaded once, where a process starts (the CLI), and passed in; library code never
reads the environment.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

import msgspec

from shared.errors import ConfigurationError

YES = frozenset({"1", "true", "yes", "on"})
NO = frozenset({"0", "false", "no", "off"})
T = TypeVar("T")
_PATH = re.compile(r" - at `\$\.(\w+)`")


class EnvSettings:
    """Mixin for settings dataclasses: `from_env` builds one from `HEIMDALL_*` variables."""

    __slots__ = ()

    env_prefix: ClassVar[str] = "HEIMDALL_"
    """Prepended to a field's upper-cased name to give its variable."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """Settings from `env` (default: this process's environment); see the module doc."""
        return load(cls, os.environ if env is None else env)


def variables(cls: type[Any]) -> dict[str, str]:
    """Field name → the environment variable that sets it."""
    prefix = getattr(cls, "env_prefix", "HEIMDALL_")
    return {
        f.name: f.metadata.get("env") or prefix + f.name.upper()
        for f in dataclasses.fields(cls)
        if f.init
    }


def load(cls: type[T], env: Mapping[str, str]) -> T:
    """An instance of the dataclass `cls` from the variables in `env`."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = variables(cls)
    given: dict[str, str] = {}
    raw: dict[str, Any] = {}
    for name, variable in names.items():
        value = env.get(variable, "").strip()
        if not value:
            continue
        given[name] = value
        try:
            raw[name] = _prepare(value, hints[name])
        except _Invalid:
            raise _error(cls, name, given[name], _form(hints[name])) from None
    try:
        return msgspec.convert(raw, cls, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        if match is None:  # raised by __post_init__: its message names the problem
            raise ConfigurationError(f"bad settings: {message}") from None
        name = match.group(1)
        reason = message[: match.start()]
        form = _form(hints[name])
        if not reason.endswith("got `str`"):  # a constraint (`>= 0`...), not a type
            form = f"{form} ({reason.removeprefix('Expected ')})"
        raise _error(cls, name, given.get(name, ""), form) from None


class _Invalid(Exception):
    pass


def _error(cls: type[Any], name: str, value: str, form: str) -> ConfigurationError:
    variable = variables(cls)[name]
    secret = not next(f for f in dataclasses.fields(cls) if f.name == name).repr
    shown = "" if secret else f"={value!r}"
    return ConfigurationError(f"{variable}{shown} is not valid: expected {form}", variable)


def _base(hint: Any) -> Any:
    """`X | None` → X; `Annotated[X, ...]` → X."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _base(args[0])
    return hint


def _prepare(value: str, hint: Any) -> Any:
    """The raw string shaped for msgspec: yes/no words as bools, commas as sequences."""
    base = _base(hint)
    origin = typing.get_origin(base)
    if base is bool:
        word = value.lower()
        if word in YES or word in NO:
            return word in YES
        raise _Invalid
    if origin in (tuple, list, frozenset, set):
        return [item.strip() for item in value.split(",") if item.strip()]
    if origin is Literal:
        for choice in typing.get_args(base):
            if isinstance(choice, str) and choice.lower() == value.lower():
                return choice
        raise _Invalid
    if base is float:
        try:
            number = float(value)
        except ValueError:
            raise _Invalid from None
        if not math.isfinite(number):
            raise _Invalid
        return number
    return value


def _form(hint: Any) -> str:
    """How a person should write a value of this type."""
    base = _base(hint)
    origin = typing.get_origin(base)
    if base is bool:
        return "1/0, true/false, yes/no or on/off"
    if base is int:
        return "a whole number"
    if base is float:
        return "a finite number"
    if base is Path:
        return "a path"
    if origin in (tuple, list, frozenset, set):
        return "comma-separated values"
    if origin is Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(base))
    return "text"


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(kind)

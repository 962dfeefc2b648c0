"""The one rule for dataset names, used by the CLI, the API (TrainingConfig.dataset and the
dataset routes) and the import; and the check that a dataset's files stay under the data dir.

A name becomes a folder under `<data dir>/datasets/`, so it is a single safe path segment:
letters, digits, `_`, `.` and `-`, starting with a letter, digit or `_` (so never `.`, `..`,
a hidden folder or something that reads as a command-line flag), at most 100 characters (the
column's width).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from msgspec import Meta

from shared.errors import InvalidInput

PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"
RULE = "1-100 characters of letters, digits, '_', '.' and '-', starting with a letter, digit or '_'"

DatasetName = Annotated[str, Meta(min_length=1, max_length=100, pattern=PATTERN)]
"""The rule as a msgspec type, for Structs that carry a dataset name."""

_NAME = re.compile(PATTERN)


class InvalidDatasetName(InvalidInput):
    """A dataset name that breaks the rule; the message quotes it and states the rule."""


def check_dataset_name(name: str) -> str:
    """Return `name` if it follows the rule, else raise InvalidDatasetName."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidDatasetName(f"dataset name {name!r} is not valid: {RULE}")
    return name


def inside(root: Path, path: Path) -> Path:
    """`path` resolved, if it lies under `root` (resolved, symlinks followed); raises ValueError
    otherwise, so nothing is ever written outside the data dir."""
    base, target = root.resolve(), path.resolve()
    if not target.is_relative_to(base):
        raise ValueError(f"{path} lies outside {root}; refusing to write there")
    return target


def dataset_dir(datasets_dir: Path, name: str) -> Path:
    """Where dataset `name` keeps its files: checked name, checked path."""
    return inside(datasets_dir, datasets_dir / check_dataset_name(name))

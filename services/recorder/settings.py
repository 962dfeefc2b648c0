"""The recorder's own knobs, loaded once from the environment and passed in.

The shared `Settings` says where the stores are; these say how the recorder consumes and what
it keeps. Every field can be set with a `HEIMDALL_RECORDER_*` variable (or, for the two
TimescaleDB policies, `HEIMDALL_METRICS_*`), through the one loader in `shared/env.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from shared.env import EnvSettings


@dataclass(frozen=True, slots=True)
class RecorderSettings(EnvSettings):
    """How the recorder reads the events stream and writes the database."""

    env_prefix: ClassVar[str] = "HEIMDALL_RECORDER_"

    batch_size: int = 1000
    """Stream entries read per XREADGROUP and written per transaction."""

    block_ms: int = 1000
    """How long one XREADGROUP waits for new entries; bounds the reaction time to a stop."""

    claim_idle_ms: int = 5000
    """Entries pending this long with another consumer are taken over (XAUTOCLAIM)."""

    claim_interval_s: float = 2.0
    """How often to look for entries left behind by dead consumers."""

    trim_interval_s: float = 10.0
    """How often to trim the events stream below the oldest entry not yet persisted."""

    dead_consumer_idle_s: float = 300.0
    """Consumers idle this long with nothing pending are removed from the group."""

    retry_initial_s: float = 0.1
    """First wait after a failed write or read; doubles on every further failure."""

    retry_max_s: float = 5.0
    """Longest wait between two attempts while a store is down."""

    metrics_retention_days: float | None = field(
        default=None, metadata={"env": "HEIMDALL_METRICS_RETENTION_DAYS"}
    )
    """TimescaleDB only: drop training_metrics chunks older than this (None: keep forever)."""

    metrics_compress_after_days: float | None = field(
        default=None, metadata={"env": "HEIMDALL_METRICS_COMPRESS_AFTER_DAYS"}
    )
    """TimescaleDB only: compress training_metrics chunks older than this (None: never)."""

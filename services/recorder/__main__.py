"""`python -m services.recorder`: one recorder process (what `heimdall recorder` runs).

Flags override the environment (`HEIMDALL_*`, `HEIMDALL_RECORDER_*`, `HEIMDALL_METRICS_*`).
Both store URLs are needed; `heimdall recorder` is the command that joins (or starts) the
embedded stores of a data dir, so that the recorder never imports the CLI. SIGTERM and SIGINT
stop it after the batch in hand is persisted and acked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.errors import ConfigurationError
from shared.logs import configure_logging
from shared.settings import Settings

from .app import run_recorder
from .settings import RecorderSettings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.recorder", description=__doc__)
    parser.add_argument("--redis-url", help="Redis/Valkey URL (HEIMDALL_REDIS_URL)")
    parser.add_argument("--database-url", help="PostgreSQL DSN (HEIMDALL_DATABASE_URL)")
    parser.add_argument("--data-dir", type=Path, help="data dir (HEIMDALL_DATA_DIR)")
    parser.add_argument("--consumer", help="consumer name in the group (default: unique)")
    parser.add_argument("--batch-size", type=int, help="entries per read and per transaction")
    parser.add_argument("--block-ms", type=int, help="longest wait of one read")
    parser.add_argument("--claim-idle-ms", type=int, help="take over entries idle this long")
    parser.add_argument("--claim-interval-s", type=float, help="how often to look for them")
    parser.add_argument("--trim-interval-s", type=float, help="how often to trim the stream")
    parser.add_argument("--metrics-retention-days", type=float, help="TimescaleDB retention")
    parser.add_argument("--metrics-compress-after-days", type=float, help="TimescaleDB compression")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING...")
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    return parser.parse_args(argv)


def recorder_settings(args: argparse.Namespace, base: RecorderSettings) -> RecorderSettings:
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RecorderSettings)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(base, **given)


async def _main(args: argparse.Namespace, settings: Settings, rs: RecorderSettings) -> None:
    configure_logging(settings.log_level, settings.log_json)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_recorder(settings, stop=stop, consumer=args.consumer, recorder_settings=rs)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = Settings.from_env().with_overrides(
            redis_url=args.redis_url,
            database_url=args.database_url,
            data_dir=args.data_dir,
            log_level=args.log_level.upper() if args.log_level else None,
            log_json=args.log_json,
        )
        rs = recorder_settings(args, RecorderSettings.from_env())
    except ConfigurationError as exc:
        sys.exit(f"error: {exc.detail}")
    if not settings.redis_url or not settings.database_url:
        sys.exit("error: give --redis-url and --database-url (or use `heimdall recorder`)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args, settings, rs))


if __name__ == "__main__":
    main()

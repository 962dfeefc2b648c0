"""`heimdall data`: synthetic datasets and imported recordings, written into the configured
stores (works against a running `heimdall up` with the same data dir)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from services.cli.options import DataDir, load_settings
from shared.settings import Settings

data_app = typer.Typer(help="Datasets: synthetic and imported recordings.", no_args_is_help=True)


@data_app.command("synth")
def data_synth(
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "default",
    samples: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many recordings.")] = 350,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    duration: Annotated[float, typer.Option(min=0.05, max=60, help="Seconds each.")] = 0.5,
    data_dir: DataDir = None,
) -> None:
    """Write a labelled synthetic RF dataset (WAV files plus rows)."""
    from services.cli.embedded import embedded_stores
    from shared.datasets import write_synthetic
    from shared.db import connect, migrate

    async def run(settings: Settings) -> int:
        assert settings.database_url
        conn = await connect(settings.database_url)
        try:
            await migrate(conn)
            return await write_synthetic(
                conn, settings.datasets_dir, dataset, samples, seed=seed, duration_s=duration
            )
        finally:
            await conn.close()

    with embedded_stores(load_settings(data_dir=data_dir)) as settings:
        typer.echo(f"wrote {asyncio.run(run(settings))} recordings to dataset {dataset!r}")


@data_app.command("import")
def data_import(
    directory: Annotated[Path, typer.Argument(help="One sub-folder of WAV files per class.")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")],
    data_dir: DataDir = None,
) -> None:
    """Import real recordings (optional manifest.csv: file, label, snr_db, approved)."""
    from services.cli.embedded import embedded_stores
    from shared.datasets import add_recordings, ensure_dataset, scan_import_dir
    from shared.db import connect, migrate

    try:
        rows = scan_import_dir(directory)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    async def run(settings: Settings) -> int:
        assert settings.database_url
        conn = await connect(settings.database_url)
        try:
            await migrate(conn)
            async with conn.transaction():
                await ensure_dataset(conn, dataset, f"imported from {directory}")
                return await add_recordings(conn, dataset, rows)
        finally:
            await conn.close()

    with embedded_stores(load_settings(data_dir=data_dir)) as settings:
        typer.echo(f"imported {asyncio.run(run(settings))} recordings into {dataset!r}")

"""`heimdall data`: synthetic datasets and imported recordings, written into the configured
stores (works against a running `heimdall up` with the same data dir)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from services.cli.options import DataDir, load_settings
from shared.errors import HeimdallError
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
    """Write a labelled synthetic RF dataset (WAV files plus rows); the same seed writes the
    same recordings with the same ids, so a job seeded alike splits them alike."""
    from services.cli.embedded import embedded_stores
    from shared.datasets import write_synthetic
    from shared.db import connect, migrate
    from shared.storage import open_store

    _checked_name(dataset)

    async def run(settings: Settings) -> int:
        assert settings.database_url
        conn = await connect(settings.database_url)
        try:
            await migrate(conn)
            return await write_synthetic(
                conn, open_store(settings), dataset, samples, seed=seed, duration_s=duration
            )
        finally:
            await conn.close()

    with embedded_stores(load_settings(data_dir=data_dir)) as settings:
        typer.echo(f"wrote {asyncio.run(run(settings))} recordings to dataset {dataset!r}")


def _checked_name(name: str) -> str:
    from shared.dataset_names import InvalidDatasetName, check_dataset_name

    try:
        return check_dataset_name(name)
    except InvalidDatasetName as exc:
        typer.echo(f"error: --dataset: {exc}", err=True)
        raise typer.Exit(2) from None


@data_app.command("import")
def data_import(
    directory: Annotated[Path, typer.Argument(help="One sub-folder of recordings per class.")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")],
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Import the good files, list the bad ones.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Import real recordings: WAV (any PCM/float format; mono, or two channels = IQ) and SigMF
    pairs, one sub-folder per class, optional manifest.csv (file, label, snr_db, approved).

    Every file is checked first; by default one bad file imports nothing (exit 1)."""
    from services.cli.embedded import embedded_stores
    from shared.datasets import add_recordings, ensure_dataset
    from shared.db import connect, migrate
    from shared.importer import scan_import_dir
    from shared.recording_files import upload_recordings
    from shared.storage import open_store

    name = _checked_name(dataset)
    try:
        scan = scan_import_dir(directory, name)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for bad in scan.bad:
        typer.echo(f"bad: {bad}", err=True)
    good = len(scan.recordings)
    if scan.bad and not skip_bad:
        typer.echo(
            f"error: {len(scan.bad)} bad file(s) or manifest row(s); nothing imported"
            f" (--skip-bad imports the {good} good recording(s))",
            err=True,
        )
        raise typer.Exit(1)
    if not good:
        typer.echo("error: no good recordings; nothing imported", err=True)
        raise typer.Exit(1)

    async def run(settings: Settings) -> int:
        assert settings.database_url
        # The files first: a row never names an object that is not there.
        stored = await asyncio.to_thread(
            upload_recordings, open_store(settings), name, scan.recordings
        )
        conn = await connect(settings.database_url)
        try:
            await migrate(conn)
            async with conn.transaction():
                await ensure_dataset(conn, name, f"imported from {directory}")
                return await add_recordings(conn, name, stored)
        finally:
            await conn.close()

    with embedded_stores(load_settings(data_dir=data_dir)) as settings:
        try:
            added = asyncio.run(run(settings))
        except HeimdallError as exc:
            typer.echo(f"error: {exc.detail}; nothing imported", err=True)
            raise typer.Exit(1) from None
    skipped = f", skipped {len(scan.bad)} bad" if scan.bad else ""
    again = f" ({good - added} already there)" if added < good else ""
    typer.echo(f"imported {added} recordings into {name!r}{again}{skipped}")

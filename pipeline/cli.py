"""Options shared by every command line: ``--config``, repeatable ``--set section.key=value``, ``--smoke``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.config import Config, ConfigError, load_config

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file (configs/<dataset>.yaml).")]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override one config value, e.g. --set train.steps=100 (repeatable; value parsed as YAML)."),
]
SmokeOption = Annotated[bool, typer.Option("--smoke", help="Apply the config's smoke settings: a few steps/videos, seconds not minutes.")]
InterpOption = Annotated[Optional[str], typer.Option(help="Interpolant: ours | linear | custom (sets interpolant.kind; default: the config's).")]
OutOption = Annotated[str, typer.Option(help="Outputs root (local path or fsspec URL): a dataset's outputs live in <out>/<data.name>/.")]
StoreOption = Annotated[Optional[str], typer.Option(help="Latent store path/URL (default <out>/<data.name>/latents.zarr).")]


def load_cli_config(config: Path, overrides: list[str] | None, smoke: bool, interp: str | None = None) -> Config:
    """Load the config for a command line (``interp`` sets interpolant.kind), exiting cleanly on a ConfigError."""
    try:
        return load_config(config, [*(overrides or []), *([f"interpolant.kind={interp}"] if interp else [])], smoke=smoke)
    except ConfigError as exc:
        typer.secho(f"config error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def fail(message: str) -> None:
    """Print ``message`` as an error and exit with status 1 (no traceback for expected user errors)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)

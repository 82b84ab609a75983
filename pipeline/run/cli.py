"""What every command line shares: its options, how it resolves the config and the run, and how it fails."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
import yaml

from pipeline.run.config import INTERPOLANT_PRESETS, PROJECT_ROOT, Config, ConfigError, absolute_paths, load_config
from pipeline.run.layout import Layout, RunNameError

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file, or a dataset name (demo, kth, clevrer) for the project's configs/<name>.yaml; a relative path not found here is looked up in the project.")]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override one config value, e.g. --set train.steps=100 (repeatable; value parsed as YAML)."),
]
SmokeOption = Annotated[bool, typer.Option("--smoke", help="Apply the config's smoke settings (seconds, not minutes); outputs and data go to <name>-smoke directories.")]
InterpOption = Annotated[Optional[str], typer.Option(help="Interpolant: ours | linear | custom | module:Name (sets interpolant.kind; default: the run's, else the config's).")]
# Not "--run": under torchrun, argparse would take it for an abbreviation of torchrun's own --run-path.
RunOption = Annotated[Optional[str], typer.Option("--run-name", help="Run name: its outputs live in <out>/<data.name>/runs/<run>/ (default: the interpolant). A run reapplies the --set overrides it was trained with.")]
OutOption = Annotated[str, typer.Option(help="Outputs root (local path or fsspec URL): a dataset's outputs live in <out>/<data.name>/.")]
DataRootOption = Annotated[Optional[str], typer.Option(help="Shard root holding <split>/shard_NNNN.hdf5 (sets data.root, taken as a plain path).")]
StoreOption = Annotated[Optional[str], typer.Option(help="Latent store path/URL (default <out>/<data.name>/latents.zarr).")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and what this stage would do (up to date / resume / build / refuse, and why); change nothing.")]


@dataclass
class StageSetup:
    """A command line's resolved config, where its outputs go and (for stages of a run) which run."""

    cfg: Config
    layout: Layout
    run: str | None  # None for the stages before training (data, encode)
    overrides: list[str]  # the run's recorded --set overrides, then this call's: what a fresh run records

    @property
    def run_dir(self) -> Path:
        return self.layout.run_dir(self.run)


def setup_stage(config: Path, overrides: list[str] | None, smoke: bool, out: str, data_root: str | None = None,
                interp: str | None = None, run: str | None = None, with_run: bool = False) -> StageSetup:
    """Load the config for a command line (exit status 2 on a config or run-name error). With ``with_run`` the run
    is ``run`` (default: the interpolant) and its recorded overrides apply before this call's."""
    location = [f"data.root={data_root}"] if data_root else []
    try:
        # Paths made absolute here, so a run's recorded overrides mean the same from any directory.
        config = find_config(config)
        mine = [absolute_paths(item) for item in [*(overrides or []), *([f"interpolant.kind={interp}"] if interp else [])]]
        cfg = load_config(config, [*mine, *location], smoke=smoke)
        layout = Layout(out, cfg.data.name)
        if not with_run:
            return StageSetup(cfg, layout, None, mine)
        name = run or interp or cfg.interpolant.kind
        if interp is None and name in INTERPOLANT_PRESETS:  # a run named 'linear' is a linear run
            if cfg.interpolant.kind != name and any(item.partition("=")[0].strip() == "interpolant.kind" for item in mine):
                raise ConfigError(f"run '{name}' is the {name} interpolant's run, but --set interpolant.kind="
                                  f"{cfg.interpolant.kind} asks for another: give the run a name of its own "
                                  "(make ... RUN=<name>, --run-name <name>)")
            mine.append(f"interpolant.kind={name}")
        merged = merge_overrides(layout.recorded_overrides(name), mine)
        cfg = load_config(config, [*merged, *location], smoke=smoke)
        return StageSetup(cfg, layout, name, merged)
    except (ConfigError, RunNameError) as exc:
        typer.secho(f"config error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def find_config(config: Path) -> Path:
    """The file ``--config`` names: the path itself when it exists; else the same relative path in the project
    (``configs/demo.yaml`` from any directory), else the project's ``configs/<name>.yaml`` (``-c demo``)."""
    config = Path(config)
    if config.exists() or config.is_absolute():
        return config
    for candidate in (PROJECT_ROOT / config, PROJECT_ROOT / "configs" / f"{config}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(path.stem for path in (PROJECT_ROOT / "configs").glob("*.yaml"))
    raise ConfigError(f"config file not found: {config}, neither here nor in the project {PROJECT_ROOT} "
                      + (f"(its configs: {', '.join(shipped)})" if shipped else
                         "(which has no configs/: install the project from its checkout, `pip install -e <checkout>`)"))


def stage_threads(stage: str) -> None:
    """Set a stage's torch threads (:mod:`pipeline.run.threads`: OMP_NUM_THREADS, else the usable CPUs shared by the
    processes of this node); rank 0 logs one ``threads:`` line."""
    from pipeline.run.threads import configure_threads, processes_on_node

    main = os.environ.get("RANK", "0") == "0"
    configure_threads(None, processes_on_node(), log=(lambda line: print(line, flush=True)) if main else None, what=stage)


def exit_if_up_to_date(check: Callable[[], str | None], dry_run: bool) -> None:
    """In a one-process, non-dry launch, print the stage's "up to date" line and exit 0 before torch loads (its
    import dominates such a launch); ``check`` is the stage's torch-free decision."""
    if dry_run or os.environ.get("WORLD_SIZE", "1") != "1":
        return
    message = check()
    if message:
        typer.echo(message)
        raise typer.Exit(0)


def merge_overrides(first: list[str], then: list[str]) -> list[str]:
    """``first`` then ``then``, one entry per key: a later value of a key replaces the earlier one."""
    merged: dict[str, str] = {}
    for item in [*first, *then]:
        key = item.split("=", 1)[0].strip()
        merged.pop(key, None)
        merged[key] = item
    return list(merged.values())


def show_dry_run(stage: str, cfg: Config) -> None:
    """The resolved config of a dry run, as YAML (the verdict follows from the stage itself)."""
    typer.echo(f"{stage}: dry run: resolved config:")
    typer.echo("  " + yaml.safe_dump(cfg.to_dict(), sort_keys=False).replace("\n", "\n  ").rstrip())


def load_cli_config(config: Path, overrides: list[str] | None, smoke: bool, data_root: str | None = None) -> Config:
    """The config alone, for command lines that write no stage output (the data stage, the VQVAE trainer)."""
    return setup_stage(config, overrides, smoke, out="outputs", data_root=data_root).cfg


def run_stage(stage: str, work: Callable[[], Any], errors: tuple[type[BaseException], ...], dry_run: bool = False) -> None:
    """Run a stage; an expected error becomes one clean line and exit status 1, or in a dry run (an input an
    earlier stage would make) a note and status 0, so a chained dry run goes on."""
    try:
        work()
        dist = sys.modules.get("pipeline.run.dist")  # imported by a stage that may have joined a process group
        if dist is not None:  # (looked up, not imported: a stage that never needed torch stays torch-free)
            dist.leave()
    except errors as exc:
        if not dry_run:
            fail(str(exc))
        typer.echo(f"{stage}: dry run: cannot decide until its inputs exist: {exc}")


def expected_errors(*specific: type[BaseException]) -> tuple[type[BaseException], ...]:
    """The errors every stage reports as one clean line (files, locks, stored data, checkpoints), plus its own."""
    from pipeline.data.checked_store import DataIntegrityError
    from pipeline.run.locks import LockedError
    from pipeline.run.safe_load import CheckpointReadError

    return (OSError, LockedError, DataIntegrityError, CheckpointReadError, *specific)


def fail(message: str) -> None:
    """Print ``message`` as an error and exit with status 1 (no traceback for expected user errors)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)

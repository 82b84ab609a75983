"""Sweeps: named runs of one config, each with its own ``--set`` overrides, brought up to date by one command and
compared in one report (``make sweep SWEEP=configs/sweeps/lr.yaml``).

A sweep file (YAML) has ``runs`` (run name: {dotted config key: value}), ``grid`` (key: [values], every
combination a run), or both, e.g. ``grid: {train.lr: [5.0e-4, 1.0e-3], interpolant.kind: [ours, linear]}``, and
optionally ``common`` ({key: value} that every run gets before its own, e.g. a study's fixed recipe) and ``pairs``
({run: the run it is paired against}, e.g. every arm of a study against its reference): the report's paired
comparisons are then exactly these, instead of every later run against the first run trained as long, else the first.
A grid run's name joins one part per key with '-': the key's last component, then the value, a number right after
it in its shorter plain or scientific form with '_' for the point (``lr5e-4``, ``lr0_5``), any other value after a
'-' with characters other than letters, digits, '_' and '-' made '_' (``kind-ours``): ``lr5e-4-kind-ours``.
Each run goes through ``make eval RUN=<name>`` with its overrides before the user's ARGS (each stage does only what
changed); the report is ``<out>/<dataset>/sweeps/<sweep file stem>/report.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import shlex
import subprocess
from collections.abc import Collection
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml

from pipeline.eval.report import find_runs, write_report
from pipeline.run.cli import fail
from pipeline.run.config import ConfigError, load_config, read_yaml, unknown_key
from pipeline.run.layout import Layout, RunNameError, check_run_name

SECTIONS = ("common", "runs", "grid", "pairs")


def value_text(value: Any) -> str:
    """``value`` as the text of a ``--set key=TEXT`` that reads back as it (strings as written: paths stay paths)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def name_part(key: str, value: Any) -> str:
    """One grid key's part of a run name: ``lr5e-4`` for train.lr = 5e-4, ``kind-ours`` for interpolant.kind = ours."""
    last = key.rsplit(".", 1)[-1]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{last}-{re.sub(r'[^A-Za-z0-9_-]+', '_', value_text(value)).strip('_')}"
    number = Decimal(repr(value)).normalize()  # the shorter of 0.0005 and 5e-4; a '.' written '_' (0_5)
    text = str(value) if isinstance(value, int) else min(f"{number:f}", f"{number:e}".replace("e+", "e"), key=len)
    return last + text.replace(".", "_")


def expand(path: Path, sweep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{run name: {key: value}} of a sweep file's body: its ``runs`` in file order, then its ``grid``'s product, each
    after the ``common`` settings."""
    for key in sweep:
        if key not in SECTIONS:
            raise ConfigError(f"{path}: {unknown_key(str(key), list(SECTIONS))}")
    runs, grid, common = (sweep.get(section) or {} for section in ("runs", "grid", "common"))
    if not all(isinstance(sweep.get(section) or {}, dict) for section in SECTIONS):
        raise ConfigError(f"{path}: 'common', 'runs', 'grid' and 'pairs' must be mappings")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: 'grid.{key}' must be a non-empty list of values")
    named = list(runs.items())
    points = itertools.product(*grid.values()) if grid else []
    named += [("-".join(map(name_part, grid, point)), dict(zip(grid, point))) for point in points]
    if not named:
        raise ConfigError(f"{path}: no runs; give 'runs' (name: overrides) and/or 'grid' (key: [values])")
    expanded: dict[str, dict[str, Any]] = {}
    for name, overrides in named:
        try:
            name = check_run_name(str(name))
        except RunNameError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if name in expanded:
            raise ConfigError(f"{path}: run name '{name}' given twice")
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path}: run '{name}' must map config keys to values, e.g. {{train.lr: 1.0e-4}}")
        expanded[name] = {**common, **overrides}
    return expanded


def pairs_of(path: Path, sweep: dict[str, Any], runs: Collection[str]) -> dict[str, str]:
    """{run: the run it is paired against} of a sweep file's ``pairs``, each name a run of the sweep."""
    pairs = {str(run): str(base) for run, base in (sweep.get("pairs") or {}).items()}
    for run, base in pairs.items():
        unknown = [name for name in (run, base) if name not in runs]
        if unknown:
            raise ConfigError(f"{path}: pairs: '{unknown[0]}' is not a run of this sweep ({', '.join(runs)})")
        if run == base:
            raise ConfigError(f"{path}: pairs: run '{run}' is paired against itself")
    return pairs


def load_sweep(path: Path, config: Path, user_sets: list[str],
               smoke: bool) -> tuple[str, dict[str, list[str]], dict[str, str]]:
    """(the runs' dataset name, {run: its ``--set`` overrides}, {run: the run it is paired against}) of a sweep file;
    every run's config is loaded with its overrides then ``user_sets``, as the stages will, so a wrong key or value
    fails here, before any work."""
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    sweep = read_yaml(path)
    runs = {name: [f"{key}={value_text(value)}" for key, value in overrides.items()]
            for name, overrides in expand(path, sweep).items()}
    datasets = set()
    for name, sets in runs.items():
        try:
            datasets.add(load_config(config, [*sets, *user_sets], smoke=smoke).data.name)
        except ConfigError as exc:
            raise ConfigError(f"{path}: run '{name}': {exc}") from None
    if len(datasets) > 1:
        raise ConfigError(f"{path}: the runs of a sweep share one dataset, not {', '.join(sorted(datasets))} (data.name)")
    return datasets.pop(), runs, pairs_of(path, sweep, runs)


def set_options(args: str) -> list[str]:
    """The ``--set`` / ``-s`` values among ARGS (what the stages apply after a run's own overrides)."""
    words = shlex.split(args)
    return [value for option, value in zip(words, words[1:]) if option in ("--set", "-s")]


def run_all(sweep: Path, runs: dict[str, list[str]], args: str, make_vars: list[str]) -> None:
    """``make eval RUN=<run> ARGS=<its overrides, then args> <make_vars>`` for each run, in order, without a shell;
    the first that fails ends the sweep with its name."""
    for k, (name, sets) in enumerate(runs.items(), 1):
        typer.echo(f"sweep: run {name} ({k}/{len(runs)}): {' '.join(sets) or 'no overrides'}")
        run_args = " ".join([*(f"--set {shlex.quote(item)}" for item in sets), args]).strip()
        code = subprocess.call(["make", "--no-print-directory", "eval", f"RUN={name}", f"ARGS={run_args}", *make_vars])
        if code:
            fail(f"sweep {sweep}: run '{name}' failed (make exit status {code}); the runs after it were not started")


def report(sweep: Path, dataset_dir: Path, runs: list[str], pairs: dict[str, str]) -> None:
    """Write the sweep's report (headed by the sweep file's path and sha256) if its text changed, and say which."""
    missing = sorted(set(runs) - set(find_runs(dataset_dir, runs)))
    if missing:
        fail(f"sweep {sweep}: no current metrics for {', '.join(missing)}")
    path = dataset_dir / "sweeps" / sweep.stem / "report.md"
    before = path.read_bytes() if path.is_file() else None
    digest = hashlib.sha256(sweep.read_bytes()).hexdigest()
    preface = [f"Sweep `{sweep}` (sha256 `{digest}`), by `make sweep`: runs {', '.join(runs)}.", ""]
    write_report(dataset_dir, runs, path, preface, pairs)
    typer.echo(f"sweep: {path} is up to date" if path.read_bytes() == before else f"sweep: wrote {path}")


app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def main(
    sweep: Annotated[Path, typer.Argument(help="Sweep file (YAML): 'runs' (name: {key: value}) and/or 'grid' (key: [values]), optional 'common' ({key: value} for every run) and 'pairs' (run: the run it is paired against in the report); see configs/sweeps/lr.yaml.")],
    make_vars: Annotated[Optional[list[str]], typer.Argument(help="VAR=value make variables passed to every make eval (DATASET, DATA_DIR, PY, NPROC, ...).")] = None,
    config: Annotated[Path, typer.Option("--config", "-c", help="The config every run starts from (make: CONFIG).")] = Path("configs/demo.yaml"),
    out: Annotated[str, typer.Option(help="Outputs root (make: OUT); the report goes to <out>/<dataset>/sweeps/<stem>/report.md.")] = "outputs",
    smoke: Annotated[bool, typer.Option("--smoke", help="Every run at the config's smoke settings (make: SMOKE=1).")] = False,
    args: Annotated[str, typer.Option(help="Extra stage options for every run, after the run's own overrides (make: ARGS).")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Every stage says what it would do (make: DRY_RUN=1); no report.")] = False,
) -> None:
    """Bring every run of a sweep up to date (make eval RUN=<run>, stopping at the first that fails), then write
    the sweep's report, or say that it is up to date."""
    if any("=" not in item for item in make_vars or []):  # a bare word would be a make target
        raise typer.BadParameter("make variables are VAR=value", param_hint="MAKE_VARS")
    try:
        dataset, runs, pairs = load_sweep(sweep, config, set_options(args), smoke)
    except ConfigError as exc:
        typer.secho(f"config error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    run_all(sweep, runs, args, [f"CONFIG={config}", f"OUT={out}", f"SMOKE={int(smoke)}", f"DRY_RUN={int(dry_run)}",
                                *(make_vars or [])])
    if dry_run:
        typer.echo(f"sweep: dry run: would write the report of {', '.join(runs)}")
    else:
        report(sweep, Layout(out, dataset).dataset_dir, list(runs), pairs)


if __name__ == "__main__":
    app()

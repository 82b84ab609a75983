"""Where every output lives: one directory per dataset, one shared latent cache, one directory per named run.

    <out>/<dataset>/latents.zarr            stage 1: shared by every run of the dataset
    <out>/<dataset>/runs/<run>/             stages 2-4 of one run: run.json, checkpoints/, metrics.jsonl, media/,
                                            forecasts.zarr, eval/
    <out>/<dataset>/report.md               every evaluated run side by side
    <out>/<dataset>/sweeps/<sweep>/report.md  the runs of one sweep side by side (pipeline/run/sweep.py)

``<dataset>`` is ``data.name`` (``<name>-smoke`` under ``--smoke``). A run's name defaults to its interpolant; a
run's ``--set`` overrides (``run.json``: ``args``) apply to its later stages before their own command line's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.run.config import IDENTIFIER, ConfigError, load_config
from pipeline.run.protocol import REBUILD

RUNS = "runs"
RUN_RECORD = "run.json"


class RunNameError(ValueError):
    """A run name that is not a plain directory name."""


def check_run_name(name: str) -> str:
    """``name`` if it is a plain identifier (letters, digits, '_', '-', not starting with '-'): never a path."""
    if not IDENTIFIER.fullmatch(name or ""):
        raise RunNameError(f"run name {name!r} must be a plain identifier (letters, digits, '_', '-'), not a path")
    return name


@dataclass(frozen=True)
class Layout:
    """The output paths of one dataset under an outputs root (a local path or an fsspec URL for the stores)."""

    out: str
    dataset: str

    @property
    def dataset_dir(self) -> Path:
        return Path(self.out) / self.dataset

    @property
    def store_url(self) -> str:
        """The latent cache, ``<out>/<dataset>/latents.zarr``."""
        return f"{str(self.out).rstrip('/')}/{self.dataset}/latents.zarr"

    @property
    def runs_dir(self) -> Path:
        return self.dataset_dir / RUNS

    def run_dir(self, run: str) -> Path:
        return self.runs_dir / check_run_name(run)

    def trained_runs(self) -> list[str]:
        """Names of the runs that hold a training record, in name order (``<run>.rebuild`` is no run's name)."""
        if not self.runs_dir.is_dir():
            return []
        names = (p.parent.name for p in self.runs_dir.glob(f"*/{RUN_RECORD}"))
        return sorted(name for name in names if IDENTIFIER.fullmatch(name))

    def recorded_overrides(self, run: str) -> list[str]:
        """The ``--set`` overrides run ``run`` was trained with ([] for a new run)."""
        return recorded_overrides(self.run_dir(run))


def run_name(run_dir: str | Path) -> str:
    """The name of the run a directory holds: its own, or the run's that its ``--force`` rebuild will replace."""
    return Path(run_dir).name.removesuffix(REBUILD)


def run_record(run_dir: Path) -> dict[str, Any]:
    """The run's ``run.json`` (its config, ``--set`` overrides, steps trained), {} for a new run; one that is not a
    readable JSON object is a RunNameError naming it (an input of the later stages, so it is never rebuilt)."""
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunNameError(f"{path}: unreadable run record ({exc}); repair or delete it") from None
    if not isinstance(record, dict):
        raise RunNameError(f"{path}: the run record is a JSON {type(record).__name__}, not an object; repair or delete it")
    return record


def recorded_overrides(run_dir: Path) -> list[str]:
    """The ``--set`` overrides the run in directory ``run_dir`` was trained with ([] for a new run)."""
    args = run_record(run_dir).get("args") or {}
    sets = (args.get("set") if isinstance(args, dict) else None) or []
    if not isinstance(sets, list) or not all(isinstance(item, str) for item in sets):
        raise RunNameError(f"{Path(run_dir) / RUN_RECORD}: 'args.set' is not a list of section.key=value overrides; "
                           "repair or delete it")
    return sets


def run_names(config: str, out: str, smoke: bool) -> list[str]:
    """The runs ``make`` works on when none is named: every trained run of the dataset, else the config's interpolant."""
    cfg = load_config(config, smoke=smoke)
    return Layout(out, cfg.data.name).trained_runs() or [cfg.interpolant.kind]


if __name__ == "__main__":  # python -m pipeline.run.layout CONFIG OUT [--smoke]: the Makefile's default run list
    import sys

    args = [a for a in sys.argv[1:] if a != "--smoke"]
    if len(args) != 2:
        sys.exit("usage: python -m pipeline.run.layout CONFIG OUT [--smoke]  (prints the run names make works on)")
    try:
        print(" ".join(run_names(args[0], args[1], "--smoke" in sys.argv[1:])))
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")

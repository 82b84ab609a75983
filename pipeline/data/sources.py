"""The one hook between the pipeline and a simulated dataset (today the demo, :mod:`pipeline.demo`).

A simulated dataset is generated instead of read, keeps a state sidecar beside each split's shards, and can be
scored against its true law of the future. The data stage and eval reach it only through :func:`simulator`, keyed by
``data.source``: core and stage code import no simulator by name. A new simulator is a module exposing a
``SIMULATOR`` and one line in :data:`SIMULATORS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

SIMULATORS = {"demo": "pipeline.demo"}  # data.source -> module exposing SIMULATOR
NO_LAW = {"status": "not a simulator dataset: the true law of the future is unknown"}  # eval's block for other data


@dataclass(frozen=True)
class Simulator:
    """What a simulated dataset provides to the stages."""

    generate: Callable[[Any, Path], dict[str, int]]  # (config, out_root) -> videos per split, written as shards
    sidecar: str  # the state file written beside each split's shards (recorded and checked by the data stage)
    score: Callable[..., dict[str, Any]]  # (config, forecasts, videos, bootstrap, log, cache dir) -> metrics.json "known_law"


def simulator(source: str) -> Simulator | None:
    """The simulator of ``data.source``, or None for recorded data (shards, converted videos)."""
    module = SIMULATORS.get(source)
    return importlib.import_module(module).SIMULATOR if module else None


def law_scores(cfg: Any, store: Any, videos: int, bootstrap: dict[str, Any], log: Callable[[str], None],
               cache_dir: Path) -> dict[str, Any]:
    """Eval's "known_law" block: the simulator's scores of the forecasts, or a status saying there is no known law.
    ``cache_dir`` keeps what the scores of every run of the dataset share (the simulator names its files by content)."""
    sim = simulator(cfg.data.source)
    return sim.score(cfg, store, videos, bootstrap, log, cache_dir) if sim else dict(NO_LAW)

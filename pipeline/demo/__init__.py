"""The demo: sprites on a plain background whose true law of the future is known (generator, state sidecar,
oracle, read-out from pixels, known-law scores), and the trainer of its small VQVAE. The stages reach it only
through :mod:`pipeline.data.sources`, which finds :data:`SIMULATOR` here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.sources import Simulator
from pipeline.demo.state import STATE_FILE


def _generate(cfg: Any, out_root: Path) -> dict[str, int]:
    from pipeline.demo.generator import generate_demo

    return generate_demo(cfg.demo, cfg.data.image_size, out_root)


def _score(cfg: Any, store: Any, videos: int, bootstrap: dict[str, Any], log, cache_dir: Path) -> dict[str, Any]:
    from pipeline.demo.scoring import known_law_scores

    return known_law_scores(cfg, store, videos, bootstrap, log, cache_dir)


SIMULATOR = Simulator(generate=_generate, sidecar=STATE_FILE, score=_score)

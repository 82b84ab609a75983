"""Augmentation views cached per video by the encode stage: pixel augmentation cannot follow encoding, so instead
of a fresh draw per clip (the reference) each video has V fixed views (docs/METHOD.md §1.4): view 0 identity,
``hflip`` (``encode.hflip_view``), ``jitterK`` (K = 1..``encode.jitter_views``: brightness, contrast, saturation,
hue, factors drawn once per (seed, split, video, view) for all the video's frames).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

import numpy as np

from pipeline.run.config import EncodeConfig

_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


@cache
def _operations():
    """albumentations' flip and colour jitter, imported on first use (the import takes seconds; training needs none)."""
    import albumentations as A

    return A.HorizontalFlip(p=1.0), A.ColorJitter(p=1.0)


@dataclass(frozen=True)
class View:
    """One cached augmentation: its name and kind (identity | hflip | jitter) and, for jitter, the ranges."""

    name: str
    kind: str
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def describe(self) -> dict:
        return asdict(self)


def make_views(cfg: EncodeConfig) -> list[View]:
    """The configured views, identity first."""
    views = [View("identity", "identity")]
    if cfg.hflip_view:
        views.append(View("hflip", "hflip"))
    for k in range(1, cfg.jitter_views + 1):
        views.append(
            View(f"jitter{k}", "jitter", cfg.jitter_brightness, cfg.jitter_contrast, cfg.jitter_saturation, cfg.jitter_hue)
        )
    return views


def apply_view(frames: np.ndarray, view: View, seed: int, split: str, video: int, view_index: int) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` frames under ``view``; jitter factors are a pure function of (seed, split, video, view)."""
    if view.kind == "identity":
        return frames
    flip, jitter = _operations()
    if view.kind == "hflip":
        return np.stack([flip.apply(frame) for frame in frames])
    split_seed = _SPLIT_SEEDS.get(split, sum(map(ord, split)))
    rng = np.random.default_rng([seed, split_seed, video, view_index])
    b, c, s = (1.0 + rng.uniform(-r, r) for r in (view.brightness, view.contrast, view.saturation))
    h = rng.uniform(-view.hue, view.hue)
    return np.stack(
        [jitter.apply(np.ascontiguousarray(f), brightness=b, contrast=c, saturation=s, hue=h, order=[0, 1, 2, 3]) for f in frames]
    )


def training_views(names: list[str] | None, n_views: int) -> list[int]:
    """Views training draws from: all but the identity when jitter views exist (the reference jitters every clip,
    docs/METHOD.md §9.19), else all (also when ``names`` is None)."""
    if names is None or len(names) != n_views or not any(name.startswith("jitter") for name in names):
        return list(range(n_views))
    return [i for i, name in enumerate(names) if name != "identity"]

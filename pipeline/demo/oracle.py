"""The demo's oracle: the true law of a sprite video's future after raw frame c is the recorded state at c advanced
by the generator's own ``_step`` with fresh kicks. Positions are top-left corners (row y, column x) in pixels;
K sprites, M oracle samples, n requested frames; float64 numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.demo import generator as demo
from pipeline.demo.state import SpriteTrack
from pipeline.run.config import DemoConfig

ORACLE_SAMPLES = 256
ORACLE_TAG = 0x6B6C  # separates the oracle's random streams from every other user of a seed
STREAM_LAW, STREAM_FORECAST = 0, 1  # the reference law / the independent oracle forecast (its noise floor)


@dataclass
class Futures:
    """Simulated futures: the state at each requested frame (velocity = the one the next step starts from)."""

    positions: np.ndarray  # [M, n, K, 2]
    velocities: np.ndarray  # [M, n, K, 2]


def as_offsets(horizon: int | Sequence[int]) -> np.ndarray:
    """Frame offsets after the start frame: an int h means 1..h; a sequence is taken as it is (each >= 1)."""
    offsets = np.arange(1, int(horizon) + 1) if np.isscalar(horizon) else np.asarray(horizon, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) == 0 or offsets.min() < 1:
        raise ValueError(f"offsets must be a non-empty list of integers >= 1, got {offsets}")
    return offsets


def dynamics(process: dict[str, Any], kick_prob: float | None = None, kick_scale: float | None = None) -> DemoConfig:
    """The settings ``demo._step`` reads, from a sidecar's process parameters (optionally overridden)."""
    if float(process["max_speed"]) != demo.MAX_SPEED:
        raise ValueError(f"the data was made with max_speed {process['max_speed']}, this generator caps at {demo.MAX_SPEED}")
    return DemoConfig(kick_prob=process["kick_prob"] if kick_prob is None else kick_prob,
                      kick_scale=process["kick_scale"] if kick_scale is None else kick_scale)


def simulate(track: SpriteTrack, frame: int, horizon: int | Sequence[int], process: dict[str, Any], n: int,
             rng: np.random.Generator, kick_prob: float | None = None, kick_scale: float | None = None) -> Futures:
    """``n`` futures of ``track`` from its state at raw frame ``frame``, kicks from ``rng``: the state at
    ``frame + offset`` for each offset of ``horizon``. All samples share one ``_step`` call per frame."""

    offsets, cfg, k = as_offsets(horizon), dynamics(process, kick_prob, kick_scale), len(track.sizes)
    sizes = np.tile(track.sizes, n)
    position, velocity = np.tile(track.positions[frame], (n, 1)), np.tile(track.velocities[frame], (n, 1))
    out = Futures(np.empty((n, len(offsets), k, 2)), np.empty((n, len(offsets), k, 2)))
    for step in range(1, int(offsets.max()) + 1):
        position, velocity = demo._step(position, velocity, sizes, int(process["image_size"]), cfg, rng)
        for j in np.flatnonzero(offsets == step):
            out.positions[:, j], out.velocities[:, j] = position.reshape(n, k, 2), velocity.reshape(n, k, 2)
    return out


def oracle_rng(seed: int, video: int, frame: int, stream: int = STREAM_LAW) -> np.random.Generator:
    """The oracle's generator for (seed, video, start frame, stream): a pure function of them."""
    return np.random.default_rng([seed, video, frame, ORACLE_TAG, stream])


def oracle_futures(track: SpriteTrack, frame: int, horizon: int | Sequence[int], process: dict[str, Any],
                   n_samples: int = ORACLE_SAMPLES, seed: int = 0, video: int = 0, stream: int = STREAM_LAW,
                   **overrides: float) -> Futures:
    """``n_samples`` draws from the true law of the future after raw frame ``frame`` (deterministic per
    (seed, video, frame, stream)); ``overrides`` (kick_prob, kick_scale) make a deliberately different law."""
    return simulate(track, frame, horizon, process, n_samples, oracle_rng(seed, video, frame, stream), **overrides)


def constant_velocity(track: SpriteTrack, frame: int, horizon: int | Sequence[int], process: dict[str, Any]) -> np.ndarray:
    """The dynamics without kicks (reflection included), deterministic: positions ``[1, n, K, 2]``."""
    return simulate(track, frame, horizon, process, 1, np.random.default_rng(0), kick_prob=0.0).positions


def copy_last(track: SpriteTrack, frame: int, horizon: int | Sequence[int]) -> np.ndarray:
    """Every sprite frozen where it is at ``frame``: positions ``[1, n, K, 2]``."""
    return np.repeat(track.positions[frame][None, None], len(as_offsets(horizon)), axis=1)

"""The demo's true conditional law of the future, and scores of a forecast ensemble against it.

The demo dataset is a simulator (:mod:`pipeline.demo.generator`), and its state sidecar (:mod:`pipeline.demo.state`)
records the state that rendered every frame. So for a clip whose last conditioning frame is raw frame c, the law of
the future given the past is known: the sprites' state at c, advanced by the generator's own ``_step`` with fresh
kicks. This module samples that law (the *oracle*), reads sprite positions back from pixels, and scores a model's
ensemble of decoded frames in that object space: did each sprite keep its identity, how good is the ensemble as a
forecast of what happened (energy score), how far is it from the true law (energy distance), is it calibrated
(coverage of the oracle's regions).

Use (the evaluation stage, per forecast video)::

    state = load_state(data_root / split)                     # pipeline.demo.state; once per split
    v = state.index(source)                                   # the store's video source key, e.g. demo/test/00003
    clip = Clip(state.track(v), state.process, frame_indices, cond, video=v)
    colours = calibrate_colours(samples[0, :cond], clip.track, frame_indices[:cond])  # decoded conditioning frames
    scores = video_scores(samples[:, cond:], clip, real=real[cond:], colours=colours)  # {set: {metric: [P]}}
    ... mean_over_videos([scores, ...]), or the stage's own bootstrap over the per-video rows

Conventions. Positions are top-left corners (row y, column x) in pixels, as the simulator holds them; a sprite's
centre is ``position + size / 2``. Shapes: K sprites (the video's, in drawing order), P predicted frames, S model
samples, M oracle samples. Everything is numpy, float64.

One measurement channel. A forecast is only seen through its pixels, and pixels determine a position only up to
the grid: a square at corner 3.2 and at 3.4 paints the same pixels (the read-out's error on exact frames is up to
0.5 px per axis for squares, smaller for discs). Against an oracle of continuous positions even a perfect
forecaster would then be scored as off the law, by an amount that dominates the early frames, where the law is
nearly a point mass (no kick with probability 1 − kick_prob per sprite). So every reference set (the oracle, its
independent copy, copy-last, constant velocity) goes through the same channel: :func:`measure_states` gives,
without drawing anything, exactly what :func:`read_frames` returns on the rendered frame (same masks, same
centroid arithmetic; tested). Only the energy score's observation is the raw state position (the future that
happened), as a proper score of the measured forecast. A decoder adds its own read-out error (the shipped demo
VQVAE: 0.37 px RMS, 98.9 % of sprites found in their own colour; the first one: 1.4 px, 93 %); :func:`video_scores` can push the references through the decoder too (``channel``), and
otherwise the read-out of the VQ reconstructions of the real frames (a ``vq_ceiling`` set scored by the caller,
or :func:`readout_error`) shows how much of the model's score is the decoder's.

Decisions (module constants):

* colour match: each pixel goes to its nearest colour (largest channel difference, L∞) among the video's sprite
  colours, the rest of the palette and the background, and to none when that nearest colour is more than
  ``COLOUR_TOL`` = 80 away. Nearest-colour assignment means no pixel can count for two colours whatever the
  tolerance (the closest palette pair, yellow and orange, is 60 apart, so a fixed window would have to be < 30
  wide); the tolerance only drops pixels far from every colour (blends where two sprites meet, a background blend
  more than 60 % background). On exact frames every sprite pixel is at distance 0 from its colour, so the read-out
  is the generator's own masks. Decoded frames are another matter: an undertrained decoder shifts colours (the first demo VQVAE: median
  L∞ error inside sprites ~20, 90th percentile ~50, yellow drawn near orange), which a window of 28 loses a quarter
  of the sprites to; :func:`calibrate_colours` measures the colours a decoder actually draws on frames whose state
  is known (the decoded conditioning frames), and reading in those kept ~95 % found instead of 89 %
  (benchmarks/results.json, known_law).
* spurious objects: a palette colour that is not one of the video's counts as an object when at least
  ``MIN_FRACTION`` of the smallest sprite's expected area is its pixels, more than ``SPURIOUS_GAP`` = 2 px from
  every pixel of the video's colours (a sprite partly drawn in the neighbouring palette colour is no new object).
* found: at least ``MIN_FRACTION`` = 0.3 of the sprite's expected area (size² for squares, π size²/4 for discs)
  matches its colour. A sprite mostly hidden under a later-drawn sprite (they are drawn in order) has fewer pixels,
  a centroid pulled towards its visible part, and under heavy occlusion is not found: that happens to the ground
  truth too (rarely), so the real frames' own identity score is the ceiling to compare with, and the oracle's
  measured positions carry the same occlusion effects as a model's.
* identity: per sample and frame, every sprite is found in its own colour, not bloated or duplicated (at most
  ``MAX_FRACTION`` = 1.5 of its expected area) and within reach of its last consistent position: ``MAX_SPEED`` px
  per frame since then, plus 1 + size / 2 px of read-out slack (an occluded centroid moves). Reflection never
  lengthens a displacement, so the truth always passes unless a sprite is hidden; without the reach test two
  sprites with swapped colours would pass. A swap between sprites within reach of each other is not seen.
* missing sprites: a sprite that is not found is placed at the frame centre (corner ``(image_size − size) / 2``)
  for the position scores; the fraction of missing sprites is reported beside them (``missing``). The scores then
  stay proper scores of the measured positions, the same deterministic function of the frames for every set.
* region of the oracle at level α (coverage): per sprite, the disc around the oracle mean whose radius is the
  α-quantile of the oracle samples' distances to that mean. The law is partly discrete (unkicked sprites and the
  pixel grid put many oracle samples at one position), so the disc's boundary is randomised as for a randomised
  PIT: a sample tied with a fraction ``a`` of oracle samples, of which ``b`` are strictly closer, is covered with
  weight clip((α − b) / a, 0, 1). For samples drawn from the oracle's law the expected coverage is α (up to
  (1 − α) / (M + 1)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.run.config import DemoConfig
from pipeline.demo import generator as demo
from pipeline.demo.state import SpriteTrack

COLOUR_TOL = 80  # a pixel farther than this (largest channel difference) from its nearest colour matches none
SPURIOUS_GAP = 2  # pixels: a non-video colour this close to a video colour's pixel is not a new object
MIN_FRACTION = 0.3  # found: at least this fraction of the expected area
MAX_FRACTION = 1.5  # identity: more than this fraction of the expected area is a bloated or duplicated sprite
ORACLE_SAMPLES = 256
LEVELS = (0.5, 0.9)
ORACLE_TAG = 0x6B6C  # separates the oracle's random streams from every other user of a seed
Channel = Callable[[np.ndarray], np.ndarray]  # frames uint8 [N, H, W, 3] -> frames as a decoder would give them
STREAM_LAW, STREAM_FORECAST = 0, 1  # the reference law / the independent oracle forecast (its noise floor)


# ----------------------------------------------------------------------------------------------------------
# The oracle: the generator's own dynamics from the recorded state
# ----------------------------------------------------------------------------------------------------------


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
    """``n`` futures of ``track`` from its state at raw frame ``frame``, with ``demo._step`` and kicks from ``rng``.

    All samples advance in one ``_step`` call per frame (rows sample-major), which is the generator's arithmetic
    row by row. Returns the state at ``frame + offset`` for each offset of ``horizon``.
    """
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


# ----------------------------------------------------------------------------------------------------------
# Read-out: sprite positions from pixels (and, equivalently, from states)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Readout:
    """Sprites read from frames (or states) with leading shape L (e.g. [S, P]).

    ``positions`` is the centroid of the sprite's matching pixel centres minus size / 2 (NaN where no pixel
    matches); ``spurious`` counts the palette colours that are not the video's yet are present as an object.
    """

    found: np.ndarray  # bool [*L, K]
    positions: np.ndarray  # float [*L, K, 2]
    counts: np.ndarray  # int [*L, K]
    spurious: np.ndarray = field(default=None)  # int [*L]

    def __post_init__(self) -> None:
        if self.spurious is None:
            self.spurious = np.zeros(self.found.shape[:-1], np.int64)


def expected_area(sizes: np.ndarray, discs: np.ndarray) -> np.ndarray:
    """Pixels a sprite paints when fully visible: size² (square) or π size² / 4 (disc)."""
    sizes = np.asarray(sizes, np.float64)
    return np.where(discs, np.pi / 4, 1.0) * sizes**2


def _centroids(counts: np.ndarray, sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Top-left corners ``[N, K, 2]`` from pixel counts ``[N, K]`` and sums of pixel-centre coordinates ``[N, K, 2]``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[..., None] - np.asarray(sizes, np.float64)[:, None] / 2


def label_pixels(frames: np.ndarray, colours: np.ndarray, background: np.ndarray = demo.BACKGROUND,
                 tol: int = COLOUR_TOL) -> np.ndarray:
    """Each pixel of ``uint8 [N, H, W, 3]``: the index of its nearest colour among ``colours [C, 3]`` and the
    background (largest channel difference), or -1 where that is the background or farther than ``tol``."""
    channels = [np.asarray(frames)[..., i].astype(np.int16) for i in range(3)]
    classes = np.concatenate([np.asarray(background, np.int16)[None], np.asarray(colours, np.int16)])
    best, label = np.full(channels[0].shape, np.iinfo(np.int16).max, np.int16), np.full(channels[0].shape, -1, np.int64)
    for c, colour in enumerate(classes):  # strict <: a tie goes to the earlier class (the background first)
        d = np.maximum(np.maximum(np.abs(channels[0] - colour[0]), np.abs(channels[1] - colour[1])), np.abs(channels[2] - colour[2]))
        closer = d < best
        best[closer], label[closer] = d[closer], c - 1
    label[best > tol] = -1
    return label


def _label_sums(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts ``[N, n]`` and sums of pixel-centre (row, column) coordinates ``[N, n, 2]`` of labels 0..n-1
    (pixel (i, j) has centre (i + 0.5, j + 0.5); the sums are exact, multiples of 0.5)."""
    _, h, w = labels.shape
    counts, sums = np.zeros((len(labels), n), np.int64), np.zeros((len(labels), n, 2))
    for c in range(n):
        match = labels == c
        per_row = match.sum(axis=2)
        counts[:, c] = per_row.sum(axis=1)
        sums[:, c, 0], sums[:, c, 1] = per_row @ (np.arange(h) + 0.5), match.sum(axis=1) @ (np.arange(w) + 0.5)
    return counts, sums


def default_others(colours: np.ndarray, palette: np.ndarray = demo.PALETTE) -> np.ndarray:
    """The palette colours that are not among ``colours``: the competitors a pixel may belong to instead."""
    colours = np.asarray(colours, np.int16)
    return np.array([c for c in palette if not (np.asarray(c, np.int16) == colours).all(axis=1).any()], np.uint8).reshape(-1, 3)


def read_objects_batch(frames: np.ndarray, colours: np.ndarray, sizes: np.ndarray, discs: np.ndarray,
                       others: np.ndarray | None = None, tol: int = COLOUR_TOL, min_fraction: float = MIN_FRACTION,
                       background: np.ndarray = demo.BACKGROUND) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sprites of known colour, size and shape read from frames ``uint8 [N, H, W, 3]`` by colour segmentation.

    A pixel belongs to sprite k when its nearest colour (largest channel difference), among the sprites'
    ``colours [K, 3]``, the competing ``others [C, 3]`` (default: the rest of the palette) and the background, is
    ``colours[k]``, at most ``tol`` away. Returns ``found bool [N, K]`` (at least ``min_fraction`` of the expected
    area), ``positions float [N, K, 2]`` (centroid of its pixel centres − size / 2: the top-left corner, for squares
    and discs alike; NaN where no pixel is its) and ``pixel_counts int [N, K]``. A sprite partly hidden under a
    later-drawn one has fewer pixels and a centroid pulled towards its visible part; mostly hidden, it is not found.
    """
    others = default_others(colours) if others is None else np.asarray(others).reshape(-1, 3)
    labels = label_pixels(frames, np.concatenate([np.asarray(colours).reshape(-1, 3), others]), background, tol)
    counts, sums = _label_sums(labels, len(sizes))
    found = counts >= min_fraction * expected_area(sizes, discs)
    return found, _centroids(counts, sums, sizes), counts


def read_objects(frame: np.ndarray, colours: np.ndarray, sizes: np.ndarray, discs: np.ndarray,
                 others: np.ndarray | None = None, tol: int = COLOUR_TOL,
                 min_fraction: float = MIN_FRACTION) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame ``uint8 [H, W, 3]``: ``found [K]``, ``positions [K, 2]``, ``pixel_counts [K]`` (see the batch form)."""
    found, positions, counts = read_objects_batch(np.asarray(frame)[None], colours, sizes, discs, others, tol, min_fraction)
    return found[0], positions[0], counts[0]


def palette_of(process: dict[str, Any] | None) -> np.ndarray:
    """The palette ``uint8 [C, 3]`` the data was drawn with (the sidecar's, else the generator's)."""
    return np.asarray(process["palette"] if process else demo.PALETTE, np.uint8)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``[N, H, W]`` masks by a (2 radius + 1)² square."""
    h, w = mask.shape[1:]
    padded = np.pad(mask, ((0, 0), (radius, radius), (radius, radius)))
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[:, dy : dy + h, dx : dx + w]
    return out


def read_frames(frames: np.ndarray, track: SpriteTrack, palette: np.ndarray = demo.PALETTE, colours: np.ndarray | None = None,
                tol: int = COLOUR_TOL, min_fraction: float = MIN_FRACTION) -> Readout:
    """The video's sprites read from frames ``uint8 [*L, H, W, 3]`` (see :func:`read_objects_batch`), with the
    sprites' colours ``colours [K, 3]`` (default: their palette colours; :func:`calibrate_colours` gives the ones a
    decoder actually draws) competing with the rest of the palette; and the spurious objects: per palette colour
    not in the video, present if at least ``min_fraction`` of the smallest sprite's expected area is its pixels,
    counting only pixels more than ``SPURIOUS_GAP`` px away from every pixel of the video's colours (so a sprite
    partly drawn in a neighbouring palette colour, or a blend where two sprites meet, is no new object)."""
    frames = np.asarray(frames)
    lead, k = frames.shape[:-3], len(track.sizes)
    flat = frames.reshape(-1, *frames.shape[-3:])
    own = palette[track.colours] if colours is None else np.asarray(colours)
    others = np.setdiff1d(np.arange(len(palette)), track.colours)
    labels = label_pixels(flat, np.concatenate([own, palette[others]]), tol=tol)
    counts, sums = _label_sums(labels, k)
    area = expected_area(track.sizes, track.discs)
    apart = ~_dilate((labels >= 0) & (labels < k), SPURIOUS_GAP)
    spurious = sum(((labels == k + i) & apart).sum(axis=(1, 2)) >= min_fraction * area.min() for i in range(len(others)))
    return Readout((counts >= min_fraction * area).reshape(*lead, k), _centroids(counts, sums, track.sizes).reshape(*lead, k, 2),
                   counts.reshape(*lead, k), np.asarray(spurious, np.int64).reshape(lead))


def calibrate_colours(frames: np.ndarray, track: SpriteTrack, frame_ids: Sequence[int], palette: np.ndarray = demo.PALETTE) -> np.ndarray:
    """The colours ``uint8 [K, 3]`` a decoder draws this video's sprites in: per sprite, the channel-wise median
    of the pixels of ``frames uint8 [N, H, W, 3]`` (decoded frames of raw frames ``frame_ids``, e.g. the decoded
    conditioning frames) where the exact rendering shows the sprite's interior (the pixel and its 4 neighbours
    its colour, so edges and occluded parts are left out). A sprite with no such pixel keeps its palette colour.

    An autoencoder may shift colours (the first demo VQVAE drew yellow close to orange); reading its frames with
    the colours it actually uses keeps the sprites found, instead of scoring the decoder's bias as lost identity.
    """
    frames, ids = np.asarray(frames), np.asarray(frame_ids)
    exact = np.stack([render_state(track.positions[t], track, frames.shape[-2], palette) for t in ids])
    out = palette[track.colours].copy()
    for k, c in enumerate(track.colours):
        m = (exact == palette[c]).all(axis=-1)
        inner = m.copy()
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        inner[:, :, 1:] &= m[:, :, :-1]
        inner[:, :, :-1] &= m[:, :, 1:]
        if inner.any():
            out[k] = np.median(frames[inner], axis=0).round().astype(np.uint8)
    return out


def measure_states(positions: np.ndarray, track: SpriteTrack, image_size: int, min_fraction: float = MIN_FRACTION) -> Readout:
    """What :func:`read_frames` returns on the frames the states ``positions [*L, K, 2]`` render, without
    rendering: each sprite's visible pixels (its ``demo._sprite_mask`` minus those of later sprites) in a window
    around it. Same pixels, same centroid arithmetic, so the results are identical (not just close)."""
    positions = np.asarray(positions, np.float64)
    lead, k = positions.shape[:-2], len(track.sizes)
    flat = positions.reshape(-1, k, 2)
    n, w = len(flat), int(np.ceil(track.sizes.max())) + 2
    counts, sums = np.zeros((n, k), np.int64), np.zeros((n, k, 2))
    for i in range(k):
        r, c = (np.floor(flat[:, i, a]).astype(np.int64)[:, None] + np.arange(w) for a in (0, 1))  # [N, w] pixels
        yy, xx = (r + 0.5)[:, :, None], (c + 0.5)[:, None, :]
        visible = ((r >= 0) & (r < image_size))[:, :, None] & ((c >= 0) & (c < image_size))[:, None, :]
        for j in range(i, k):  # sprite i, minus every sprite drawn after it
            mask = _masks(flat[:, j], track.sizes[j], track.discs[j], yy, xx)
            visible &= mask if j == i else ~mask
        per_row = visible.sum(axis=2)
        counts[:, i] = per_row.sum(axis=1)
        sums[:, i, 0], sums[:, i, 1] = (per_row * (r + 0.5)).sum(axis=1), (visible.sum(axis=1) * (c + 0.5)).sum(axis=1)
    found = counts >= min_fraction * expected_area(track.sizes, track.discs)
    return Readout(found.reshape(*lead, k), _centroids(counts, sums, track.sizes).reshape(*lead, k, 2),
                   counts.reshape(*lead, k))


def _masks(corners: np.ndarray, size: float, disc: bool, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The generator's sprite mask for N corners ``[N, 2]`` on per-corner pixel grids ``yy [N, w, 1]``, ``xx [N, 1, w]``."""
    return demo._sprite_mask((corners[:, 0, None, None], corners[:, 1, None, None]), float(size), bool(disc), yy, xx)


def render_state(positions: np.ndarray, track: SpriteTrack, image_size: int, palette: np.ndarray = demo.PALETTE,
                 background: np.ndarray = demo.BACKGROUND) -> np.ndarray:
    """The frame ``uint8 [H, W, 3]`` the generator draws from corners ``positions [K, 2]`` (sprites in order)."""
    yy, xx = np.mgrid[0:image_size, 0:image_size] + 0.5
    frame = np.empty((image_size, image_size, 3), np.uint8)
    frame[:] = background
    for k in range(len(track.sizes)):
        frame[demo._sprite_mask(positions[k], track.sizes[k], track.discs[k], yy, xx)] = palette[track.colours[k]]
    return frame


def render_states(positions: np.ndarray, track: SpriteTrack, image_size: int, palette: np.ndarray = demo.PALETTE) -> np.ndarray:
    """Frames ``uint8 [*L, H, W, 3]`` of states ``positions [*L, K, 2]`` (:func:`render_state` for each)."""
    positions = np.asarray(positions, np.float64)
    flat = positions.reshape(-1, *positions.shape[-2:])
    frames = np.stack([render_state(p, track, image_size, palette) for p in flat])
    return frames.reshape(*positions.shape[:-2], *frames.shape[1:])


def readout_error(frames: np.ndarray, track: SpriteTrack, frame_ids: Sequence[int], palette: np.ndarray = demo.PALETTE,
                  colours: np.ndarray | None = None, tol: int = COLOUR_TOL) -> dict[str, float]:
    """How well sprites are read from frames ``uint8 [N, H, W, 3]`` (e.g. VQ reconstructions) of raw frames
    ``frame_ids`` of the video, read with ``colours`` (default: the palette's; see :func:`calibrate_colours`).

    Returns: ``found_rate`` (of the sprites found in the exact rendering, the fraction found in ``frames``),
    ``found_rate_exact`` (found in the exact rendering: below 1 only under heavy occlusion), ``spurious_rate``
    (frames with a spurious object), and the position error (pixels, Euclidean, sprites found in both) against the
    state (``*_vs_state``, which includes the pixel grid's own error) and against the read-out of the exact
    rendering (``*_vs_exact``: what the frames' degradation adds): ``rms_``, ``median_``, ``p90_``, ``max_``.
    """
    truth = track.positions[np.asarray(frame_ids)]
    got = read_frames(frames, track, palette, colours, tol)
    exact = measure_states(truth, track, frames.shape[-2])
    both = got.found & exact.found
    out = {"found_rate": float(both.sum() / max(exact.found.sum(), 1)), "found_rate_exact": float(exact.found.mean()),
           "spurious_rate": float((got.spurious > 0).mean())}
    for tag, ref in (("vs_state", truth), ("vs_exact", exact.positions)):
        e = np.linalg.norm(got.positions - ref, axis=-1)[both]
        values = (np.sqrt(np.mean(e**2)), np.median(e), np.percentile(e, 90), e.max()) if e.size else (np.nan,) * 4
        for name, value in zip(("rms", "median", "p90", "max"), values):  # nan: no sprite found in both
            out[f"{name}_{tag}"] = float(value)
    return out


def sprite_pixel_psnr(frames: np.ndarray, real: np.ndarray, background: np.ndarray = demo.BACKGROUND) -> float:
    """PSNR (dB, peak 255) of ``frames`` against ``real`` (both uint8 [N, H, W, 3]) over the pixels where ``real``
    shows a sprite (any channel differs from the background), pooled over all frames: the demo's sprites cover a few
    percent of a frame, so a whole-frame PSNR is mostly the background's."""
    real = np.asarray(real)
    sprite = (real != np.asarray(background, real.dtype)).any(axis=-1)
    if not sprite.any():
        raise ValueError("sprite_pixel_psnr: no sprite pixel in the real frames")
    err = np.asarray(frames, np.float64)[sprite] - real[sprite].astype(np.float64)
    mse = float(np.mean(err**2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def pooled_readout_errors(results: list[dict[str, float]]) -> dict[str, float | None]:
    """Mean over videos of each :func:`readout_error` entry (max for the ``max_`` entries; NaNs left out), rounded."""
    out: dict[str, float | None] = {}
    for key in results[0]:
        values = [r[key] for r in results if not np.isnan(r[key])]
        out[key] = round(float(max(values) if key.startswith("max_") else np.mean(values)), 3) if values else None
    return out


def decoder_fidelity(reconstruct: Callable[[np.ndarray], np.ndarray], reader, state, videos: int = 0,
                     stride: int = 4) -> dict[str, Any]:
    """How well an autoencoder keeps the demo's sprites: its reconstructions of every ``stride``-th frame of the
    first ``videos`` videos (0 = all) of a split (``reader``: its ShardReader; ``state``: its DemoState), read out.

    ``reconstruct``: uint8 frames [N, H, W, 3] -> their uint8 reconstructions. Returns the PSNR of whole frames and
    of sprite pixels (:func:`sprite_pixel_psnr`), and the pooled :func:`readout_error` read in the palette's colours
    (``palette_colours``: is each sprite drawn in its own colour?) and in the colours calibrated on the first two
    reconstructed frames of each video (``calibrated_colours``: is it drawn in a consistent colour?), on the others.
    """
    count = len(reader) if videos <= 0 else min(videos, len(reader))
    palette, calibrated, reals, recons = [], [], [], []
    for v in range(count):
        ids = np.arange(0, int(reader.lengths[v]), stride)
        real = reader.read_frames(v, ids)
        recon = reconstruct(real)
        track = state.track(v)
        colours = calibrate_colours(recon[:2], track, ids[:2])
        palette.append(readout_error(recon[2:], track, ids[2:]))
        calibrated.append(readout_error(recon[2:], track, ids[2:], colours=colours))
        reals.append(real)
        recons.append(recon)
    real, recon = np.concatenate(reals), np.concatenate(recons)
    mse = float(np.mean((recon.astype(np.float64) - real) ** 2))
    return {"videos": count, "frames": len(real), "psnr": round(10 * np.log10(255.0**2 / max(mse, 1e-12)), 2),
            "psnr_sprite_pixels": round(sprite_pixel_psnr(recon, real), 2),
            "palette_colours": pooled_readout_errors(palette), "calibrated_colours": pooled_readout_errors(calibrated)}


# ----------------------------------------------------------------------------------------------------------
# Scores (per predicted frame)
# ----------------------------------------------------------------------------------------------------------


def fallback_positions(readout: Readout, sizes: np.ndarray, image_size: int) -> np.ndarray:
    """Measured corners ``[*L, K, 2]``: the read-out where the sprite is found, else the corner that puts it at
    the frame centre."""
    centre = (image_size - np.asarray(sizes, np.float64))[:, None] / 2 * np.ones(2)
    return np.where(readout.found[..., None], readout.positions, centre)


def identity_kept(readout: Readout, track: SpriteTrack, start: np.ndarray, offsets: np.ndarray,
                  max_speed: float = demo.MAX_SPEED) -> np.ndarray:
    """Per sample and frame (readout ``[S, P, K]``): every sprite is found in its own colour, not bloated or
    duplicated (at most ``MAX_FRACTION`` of its area), and where it could have got to: within ``max_speed`` per
    frame (plus 1 + size / 2 px of read-out slack) of its last such position, starting from ``start [K, 2]`` at
    offset 0. Reflections never lengthen a displacement, so the truth always passes (unless occluded); a sprite
    showing up in another's colour far away (swapped colours, a teleport) fails. Returns bool ``[S, P]``."""
    s, p, k = readout.found.shape
    slack = 1.0 + np.asarray(track.sizes, np.float64) / 2
    ok_count = readout.found & (readout.counts <= MAX_FRACTION * expected_area(track.sizes, track.discs))
    anchor, anchor_offset = np.broadcast_to(np.asarray(start, np.float64), (s, k, 2)).copy(), np.zeros((s, k))
    kept = np.zeros((s, p, k), bool)
    for j in range(p):
        reach = max_speed * (offsets[j] - anchor_offset) + slack
        kept[:, j] = ok_count[:, j] & (np.linalg.norm(readout.positions[:, j] - anchor, axis=-1) <= reach)
        anchor[kept[:, j]], anchor_offset[kept[:, j]] = readout.positions[:, j][kept[:, j]], offsets[j]
    return kept.all(axis=-1)


def count_kept(readout: Readout) -> np.ndarray:
    """Per sample and frame: the number of palette colours present as objects (the video's found + spurious)
    equals the true sprite count. Returns bool ``[*L]``."""
    return readout.found.sum(axis=-1) + readout.spurious == readout.found.shape[-1]


def _pair_mean(a: np.ndarray, b: np.ndarray, same: bool = False) -> np.ndarray:
    """Mean Euclidean distance over all pairs: ``a [A, P, D]``, ``b [B, P, D]`` -> ``[P]`` (Gram form on centred
    vectors, so an oracle of 256 members costs milliseconds; round-off ~1e-6 px). ``same``: ``b`` is ``a``, whose
    self-pairs are set to exactly 0."""
    out = np.empty(a.shape[1])
    for j in range(a.shape[1]):
        shift = b[:, j].mean(axis=0)
        x, y = a[:, j] - shift, b[:, j] - shift
        d2 = (x * x).sum(axis=1)[:, None] + (y * y).sum(axis=1)[None] - 2 * x @ y.T
        if same:
            np.fill_diagonal(d2, 0.0)
        out[j] = np.sqrt(np.maximum(d2, 0.0)).mean()
    return out


def _within_mean(a: np.ndarray) -> np.ndarray:
    """Mean Euclidean distance over distinct pairs of ``a [A, P, D]`` (the unbiased E|X − X'|) -> ``[P]``; 0 for A = 1."""
    m = len(a)
    return _pair_mean(a, a, same=True) * m / (m - 1) if m > 1 else np.zeros(a.shape[1])


def _vectors(positions: np.ndarray) -> tuple[np.ndarray, float]:
    """``[M, P, K, 2]`` -> ``[M, P, 2K]`` and the per-sprite normaliser sqrt(K)."""
    m, p, k, _ = positions.shape
    return np.asarray(positions, np.float64).reshape(m, p, 2 * k), float(np.sqrt(k))


def position_energy_score(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fair energy score of an ensemble of positions ``[S, P, K, 2]`` against what happened ``[P, K, 2]``:
    E||X − y|| − E||X − X'|| / 2 over all sprites as one vector, divided by sqrt(K) (an RMS over sprites of a
    Euclidean distance, pixels). One member: its error. Returns ``[P]``; lower is better."""
    x, norm = _vectors(samples)
    y, _ = _vectors(np.asarray(truth)[None])
    return (_pair_mean(x, y) - _within_mean(x) / 2) / norm


def energy_distance(x: np.ndarray, y: np.ndarray, y_spread: np.ndarray | None = None) -> np.ndarray:
    """Energy distance 2 E|X − Y| − E|X − X'| − E|Y − Y'| between ensembles ``[S, P, K, 2]`` and ``[M, P, K, 2]``
    per frame (U-statistic: unbiased, so it can be slightly negative; 0 in expectation iff the laws agree),
    divided by sqrt(K). A one-member set is taken as a point mass (E|X − X'| = 0). Returns ``[P]``.

    For y ~ Y and a law X, E_y ES(X, y) − E_y ES(Y, y) = ED(X, Y) / 2: the distance is the energy score a forecaster
    loses to the oracle, on average over the futures the oracle's law produces. ``y_spread`` (= :func:`spread`
    of ``y``) saves recomputing the oracle's term when several sets are compared with one oracle."""
    (a, norm), (b, _) = _vectors(x), _vectors(y)
    y_spread = spread(y) if y_spread is None else y_spread
    return (2 * _pair_mean(a, b) - _within_mean(a)) / norm - y_spread


def spread(y: np.ndarray) -> np.ndarray:
    """E|Y − Y'| / sqrt(K) of an ensemble ``[M, P, K, 2]`` (distinct pairs): ``[P]``."""
    b, norm = _vectors(y)
    return _within_mean(b) / norm


def coverage(samples: np.ndarray, oracle: np.ndarray, levels: Sequence[float] = LEVELS) -> np.ndarray:
    """Fraction of the samples' sprite positions ``[S, P, K, 2]`` inside the oracle's level-α regions (per
    sprite: the disc around the oracle mean holding a fraction α of the oracle samples ``[M, P, K, 2]``, its
    boundary randomised over ties; module docstring). Mean over samples and sprites: ``[len(levels), P]``.
    α for a calibrated forecaster; below α when its samples stray outside the law's regions (over-dispersed or
    biased), above α when they crowd its centre (under-dispersed, e.g. no kicks)."""
    centre = oracle.mean(axis=0)
    d_oracle = np.linalg.norm(oracle - centre, axis=-1)  # [M, P, K]
    d = np.linalg.norm(samples - centre, axis=-1)  # [S, P, K]
    below = (d_oracle[None] < d[:, None]).mean(axis=1)  # [S, P, K]
    tied = (d_oracle[None] == d[:, None]).mean(axis=1)
    out = []
    for alpha in levels:
        with np.errstate(invalid="ignore", divide="ignore"):
            covered = np.where(tied > 0, np.clip((alpha - below) / tied, 0, 1), below <= alpha)
        out.append(covered.mean(axis=(0, 2)))
    return np.stack(out)


# ----------------------------------------------------------------------------------------------------------
# One clip: every score of every set
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """A forecast clip of one demo video: raw frames ``frame_indices``, the first ``cond`` conditioning.

    ``video`` is the video's index in its split (it seeds the oracle); ``process`` the sidecar's parameters.
    """

    track: SpriteTrack
    process: dict[str, Any]
    frame_indices: np.ndarray
    cond: int
    video: int = 0

    @property
    def last(self) -> int:
        """Raw index of the last conditioning frame: the state the law starts from."""
        return int(self.frame_indices[self.cond - 1])

    @property
    def offsets(self) -> np.ndarray:
        """Frames from the last conditioning frame to each predicted frame ``[P]``."""
        return np.asarray(self.frame_indices[self.cond:], np.int64) - self.last

    @property
    def truth(self) -> np.ndarray:
        """The state positions at the predicted frames ``[P, K, 2]`` (the future that happened)."""
        return self.track.positions[np.asarray(self.frame_indices[self.cond:])]

    @property
    def image_size(self) -> int:
        return int(self.process["image_size"])

    def oracle(self, n: int = ORACLE_SAMPLES, seed: int = 0, stream: int = STREAM_LAW, **overrides: float) -> np.ndarray:
        """Positions ``[n, P, K, 2]`` drawn from the law of the predicted frames given the conditioning ones."""
        return oracle_futures(self.track, self.last, self.offsets, self.process, n, seed, self.video, stream, **overrides).positions

    def references(self) -> dict[str, np.ndarray]:
        """The deterministic references' positions ``[1, P, K, 2]``: copy-last and constant velocity."""
        return {"copy_last": copy_last(self.track, self.last, self.offsets),
                "constant_velocity": constant_velocity(self.track, self.last, self.offsets, self.process)}

    @property
    def palette(self) -> np.ndarray:
        return palette_of(self.process)

    def read(self, frames: np.ndarray, colours: np.ndarray | None = None) -> Readout:
        """Read-out of frames ``uint8 [*L, P, H, W, 3]`` (sprites in ``colours``, default the palette's)."""
        return read_frames(frames, self.track, self.palette, colours)

    def measure(self, positions: np.ndarray, channel: Channel | None = None, colours: np.ndarray | None = None) -> Readout:
        """The read-out of the frames that states ``positions [*L, P, K, 2]`` render: exactly, without rendering
        (:func:`measure_states`), or, with a ``channel``, of the rendered frames passed through it (read in
        ``colours``)."""
        if channel is None:
            return measure_states(positions, self.track, self.image_size)
        frames = render_states(positions, self.track, self.image_size, self.palette)
        flat = frames.reshape(-1, *frames.shape[-3:])
        return self.read(np.asarray(channel(flat)).reshape(frames.shape), colours)


def set_scores(readout: Readout, clip: Clip, law: np.ndarray, law_spread: np.ndarray | None = None,
               levels: Sequence[float] = LEVELS) -> dict[str, np.ndarray]:
    """Every known-law score of one set (readout ``[S, P, K]``) against the measured oracle positions ``law
    [M, P, K, 2]`` (already through :func:`fallback_positions`; ``law_spread`` = :func:`spread` of it, optional).
    Returns ``{metric: [P]}``:

    identity_kept, count_kept (fractions of samples), missing (fraction of the samples' sprites not found),
    energy (position energy score vs the state, px), law_distance (energy distance to the oracle, px),
    coverage50 / coverage90 (one key per level: ``coverage{round(100 α)}``).
    """
    positions = fallback_positions(readout, clip.track.sizes, clip.image_size)
    start = clip.track.positions[clip.last]
    out = {
        "identity_kept": identity_kept(readout, clip.track, start, clip.offsets, float(clip.process["max_speed"])).mean(axis=0),
        "count_kept": count_kept(readout).mean(axis=0),
        "missing": 1.0 - readout.found.mean(axis=(0, 2)),
        "energy": position_energy_score(positions, clip.truth),
        "law_distance": energy_distance(positions, law, law_spread),
    }
    for alpha, row in zip(levels, coverage(positions, law, levels)):
        out[f"coverage{round(100 * alpha)}"] = row
    return out


def video_scores(samples: np.ndarray, clip: Clip, real: np.ndarray | None = None, n_oracle: int = ORACLE_SAMPLES,
                 seed: int = 0, colours: np.ndarray | None = None, channel: Channel | None = None,
                 frame_sets: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Known-law scores of a video's decoded forecasts ``uint8 [S, P, H, W, 3]`` (the predicted frames) and of
    the references, each ``{metric: [P]}`` (:func:`set_scores`), under the sets:

    * ``model``: the samples, read from their pixels in ``colours [K, 3]`` (default: the palette's; pass
      :func:`calibrate_colours` of the decoded conditioning frames to read a decoder's colours);
    * ``oracle``: S fresh draws from the true law (an independent stream): what a perfect forecaster scores; its
      ``law_distance`` (0 in expectation) is the noise floor of the model's;
    * ``copy_last``, ``constant_velocity``: one-member deterministic references;
    * ``real``: the real predicted frames ``uint8 [P, H, W, 3]``, if given, as a one-member set (the read-out's
      ceiling: identity lost only under heavy occlusion, energy = the pixel grid's error);
    * every entry of ``frame_sets``, ``{name: uint8 [L, P, H, W, 3]}``, read like the samples (e.g. the VQ
      reconstruction of the real frames, ``vq_ceiling``: the decoder's own share of the model's scores).

    The reference law has ``n_oracle`` members (seed ``seed``). The oracle and reference sets are measured
    exactly as their rendered frames would read (:func:`measure_states`), or, with ``channel`` (e.g. the VQVAE's
    encode-decode, ``uint8 [N, H, W, 3] -> uint8 [N, H, W, 3]``), rendered, passed through it and read in
    ``colours`` like the samples, so that the model and the references share the decoder's read-out error too
    (costs (n_oracle + S + 2) P frames through the channel per video).
    """
    measure = lambda positions: clip.measure(positions, channel, colours)  # noqa: E731
    law = fallback_positions(measure(clip.oracle(n_oracle, seed)), clip.track.sizes, clip.image_size)
    readouts = {"model": clip.read(samples, colours),
                "oracle": measure(clip.oracle(len(samples), seed, STREAM_FORECAST)),
                **{name: measure(p) for name, p in clip.references().items()}}
    if real is not None:
        readouts["real"] = clip.read(np.asarray(real)[None])
    readouts.update({name: clip.read(frames, colours) for name, frames in (frame_sets or {}).items()})
    law_spread = spread(law)
    return {name: set_scores(readout, clip, law, law_spread) for name, readout in readouts.items()}


def mean_over_videos(per_video: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per set and metric, the curve over predicted frames averaged over videos and its overall mean:
    ``{set: {metric: {"per_frame": [P] floats, "mean": float}}}`` (sets missing from some videos are averaged over
    the videos that have them)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in dict.fromkeys(k for scores in per_video for k in scores):
        rows = [scores[name] for scores in per_video if name in scores]
        out[name] = {}
        for metric in rows[0]:
            curve = np.mean([row[metric] for row in rows], axis=0)
            out[name][metric] = {"per_frame": [float(x) for x in curve], "mean": float(curve.mean())}
    return out

"""Sprite positions read back from pixels (and, identically, from states), the renderer, and how well a decoder keeps
the sprites. Positions are top-left corners (row y, column x) in pixels: centroid of the pixel centres − size / 2.

* colour match: each pixel goes to its nearest colour (L∞) among the video's sprite colours, the rest of the palette
  and the background, or to none beyond ``COLOUR_TOL``. Nearest-colour means no pixel counts twice (yellow and
  orange are only 60 apart); on exact frames the read-out is the generator's own masks. A decoder may shift colours:
  :func:`calibrate_colours` measures the ones it draws.
* spurious: a non-video palette colour with at least ``MIN_FRACTION`` of the smallest sprite's area in pixels more
  than ``SPURIOUS_GAP`` px from the video's colours.
* found: at least ``MIN_FRACTION`` of the expected area matches. Heavy occlusion (sprites are drawn in order) loses
  a sprite in the ground truth too, so the real frames' read-out is the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.demo import generator as demo
from pipeline.demo.state import SpriteTrack

COLOUR_TOL = 80  # a pixel farther than this (largest channel difference) from its nearest colour matches none
SPURIOUS_GAP = 2  # pixels: a non-video colour this close to a video colour's pixel is not a new object
MIN_FRACTION = 0.3  # found: at least this fraction of the expected area


@dataclass
class Readout:
    """Sprites read from frames (or states) with leading shape L (e.g. [S, P]); positions NaN where no pixel
    matches; ``spurious`` counts non-video palette colours present as an object."""

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
    """Sprites of known ``colours [K, 3]``, size and shape read from frames ``uint8 [N, H, W, 3]`` by nearest-colour
    segmentation against ``others [C, 3]`` (default: the rest of the palette) and the background. Returns
    ``found bool [N, K]``, ``positions float [N, K, 2]`` (NaN where no pixel) and ``pixel_counts int [N, K]``."""
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
    """The video's sprites and spurious objects (module docstring) read from frames ``uint8 [*L, H, W, 3]`` in
    ``colours [K, 3]`` (default: their palette colours)."""
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
    """The colours ``uint8 [K, 3]`` a decoder draws the sprites in: per sprite, the median of decoded ``frames
    uint8 [N, H, W, 3]`` (of raw frames ``frame_ids``) over the sprite's interior in the exact rendering (pixel and
    4 neighbours its colour); else its palette colour. So a decoder's colour bias is not scored as lost identity."""
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
    """Exactly what :func:`read_frames` returns on the frames that ``positions [*L, K, 2]`` render, without
    rendering: each sprite's mask minus later sprites', in a window around it."""
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
    """How well sprites are read (in ``colours``) from frames ``uint8 [N, H, W, 3]`` of raw frames ``frame_ids``.
    Returns ``found_rate`` (of those found in the exact rendering), ``found_rate_exact``, ``spurious_rate``, and
    the position error in px of sprites found in both, ``rms_``/``median_``/``p90_``/``max_`` × ``vs_state``
    (includes the pixel grid's error) and ``vs_exact`` (what the frames' degradation adds)."""
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
    """How well ``reconstruct`` (uint8 [N, H, W, 3] -> same) keeps the sprites of every ``stride``-th frame of the
    first ``videos`` (0 = all) of a split (its ShardReader and DemoState): whole-frame and sprite-pixel PSNR, and the
    pooled :func:`readout_error` in the palette's colours and in colours calibrated on each video's first two frames."""

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


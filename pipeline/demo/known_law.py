"""The demo's known-law scores: a forecast ensemble against the true conditional law of the future.

The law is samplable (:mod:`pipeline.demo.oracle`); decoded frames are read back to sprite positions
(:mod:`pipeline.demo.readout`) and scored in object space. Use, per forecast video::

    state = load_state(data_root / split); v = state.index(source)
    clip = Clip(state.track(v), state.process, frame_indices, cond, video=v)
    colours = calibrate_colours(samples[0, :cond], clip.track, frame_indices[:cond])
    scores = video_scores(samples[:, cond:], clip, real=real[cond:], colours=colours)  # {set: {metric: [P]}}

Conventions: positions are top-left corners (row y, column x) in pixels; K sprites, P predicted frames, S model
samples, M oracle samples; numpy float64.

One measurement channel: pixels fix a position only up to the grid, so every reference set goes through
:func:`~pipeline.demo.readout.measure_states` (exactly what ``read_frames`` gives on the rendered frame), else even a
perfect forecaster would look off the law; only the energy score observes the raw state.

* identity: every sprite found in its own colour, at most ``MAX_FRACTION`` of its expected area, and within
  ``MAX_SPEED`` px per frame (+ 1 + size / 2 px slack) of its last consistent position. Reflection never lengthens
  a displacement, so the truth passes unless hidden; a swap between sprites within reach of each other is not seen.
* missing sprites are placed at the frame centre for the position scores and reported as ``missing``, so the
  scores stay proper scores of the measured positions.
* coverage at level α: per sprite, the disc around the oracle mean whose radius is the α-quantile of the oracle's
  distances to it; ties (the law is partly discrete) are randomised as in a randomised PIT: a sample tied with a
  fraction ``a`` of oracle samples, ``b`` strictly closer, counts clip((α − b) / a, 0, 1). Expected coverage of
  oracle draws is α (up to (1 − α) / (M + 1)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.demo import generator as demo
from pipeline.demo.oracle import ORACLE_SAMPLES, STREAM_FORECAST, STREAM_LAW, constant_velocity, copy_last, oracle_futures
from pipeline.demo.readout import Readout, expected_area, measure_states, palette_of, read_frames, render_states
from pipeline.demo.state import SpriteTrack

MAX_FRACTION = 1.5  # identity: more than this fraction of the expected area is a bloated or duplicated sprite
LEVELS = (0.5, 0.9)
Channel = Callable[[np.ndarray], np.ndarray]  # frames uint8 [N, H, W, 3] -> frames as a decoder would give them


def fallback_positions(readout: Readout, sizes: np.ndarray, image_size: int) -> np.ndarray:
    """Measured corners ``[*L, K, 2]``: the read-out where found, else the frame centre."""
    centre = (image_size - np.asarray(sizes, np.float64))[:, None] / 2 * np.ones(2)
    return np.where(readout.found[..., None], readout.positions, centre)


def identity_kept(readout: Readout, track: SpriteTrack, start: np.ndarray, offsets: np.ndarray,
                  max_speed: float = demo.MAX_SPEED) -> np.ndarray:
    """Identity kept per sample and frame (readout ``[S, P, K]``; module docstring), reach measured from
    ``start [K, 2]`` at offset 0. Returns bool ``[S, P]``."""
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
    """Per sample and frame: found + spurious objects equal the true sprite count. Returns bool ``[*L]``."""

    return readout.found.sum(axis=-1) + readout.spurious == readout.found.shape[-1]


def _pair_mean(a: np.ndarray, b: np.ndarray, same: bool = False) -> np.ndarray:
    """Mean Euclidean distance over all pairs: ``a [A, P, D]``, ``b [B, P, D]`` -> ``[P]`` (Gram form on centred
    vectors). ``same``: ``b`` is ``a``, whose self-pairs are set to exactly 0."""
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
    """Energy distance 2 E|X − Y| − E|X − X'| − E|Y − Y'| / sqrt(K) between ``[S, P, K, 2]`` and ``[M, P, K, 2]``
    per frame: an unbiased U-statistic (can be slightly negative); a one-member set is a point mass. Returns ``[P]``.
    For y ~ Y, E_y ES(X, y) − E_y ES(Y, y) = ED(X, Y) / 2: the score a forecaster loses to the oracle.
    ``y_spread`` (= :func:`spread` of ``y``) saves recomputing the oracle's term."""
    (a, norm), (b, _) = _vectors(x), _vectors(y)
    y_spread = spread(y) if y_spread is None else y_spread
    return (2 * _pair_mean(a, b) - _within_mean(a)) / norm - y_spread


def spread(y: np.ndarray) -> np.ndarray:
    """E|Y − Y'| / sqrt(K) of an ensemble ``[M, P, K, 2]`` (distinct pairs): ``[P]``."""
    b, norm = _vectors(y)
    return _within_mean(b) / norm


def coverage(samples: np.ndarray, oracle: np.ndarray, levels: Sequence[float] = LEVELS) -> np.ndarray:
    """Fraction of sample positions ``[S, P, K, 2]`` inside the oracle's (``[M, P, K, 2]``) level-α discs (module
    docstring), mean over samples and sprites: ``[len(levels), P]``. α when calibrated; below when over-dispersed
    or biased, above when under-dispersed."""
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


@dataclass
class Clip:
    """A forecast clip of one demo video: raw frames ``frame_indices``, the first ``cond`` conditioning; ``video``
    (its index in the split) seeds the oracle; ``process`` holds the sidecar's parameters."""

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
        """Read-out of the frames that ``positions [*L, P, K, 2]`` render: exactly without rendering, or rendered
        and passed through ``channel`` (read in ``colours``)."""
        if channel is None:
            return measure_states(positions, self.track, self.image_size)
        frames = render_states(positions, self.track, self.image_size, self.palette)
        flat = frames.reshape(-1, *frames.shape[-3:])
        return self.read(np.asarray(channel(flat)).reshape(frames.shape), colours)


def set_scores(readout: Readout, clip: Clip, law: np.ndarray, law_spread: np.ndarray | None = None,
               levels: Sequence[float] = LEVELS) -> dict[str, np.ndarray]:
    """Known-law scores of one set (readout ``[S, P, K]``) against measured oracle positions ``law [M, P, K, 2]``
    (after :func:`fallback_positions`). Returns ``{metric: [P]}``: identity_kept, count_kept, missing (fractions),
    energy (px, vs the state), law_distance (px, to the oracle), ``coverage{round(100 α)}`` per level."""
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
    """Known-law scores (:func:`set_scores`) of a video's decoded forecasts ``uint8 [S, P, H, W, 3]`` and of the
    references, under the sets ``model`` (read in ``colours [K, 3]``, e.g. :func:`calibrate_colours`), ``oracle``
    (S fresh draws: the noise floor), ``copy_last``, ``constant_velocity``, ``real`` (the real frames
    ``[P, H, W, 3]``, if given: the read-out's ceiling) and each of ``frame_sets {name: uint8 [L, P, H, W, 3]}``
    (e.g. ``vq_ceiling``). The law has ``n_oracle`` members; with ``channel`` (uint8 frames ``[N, H, W, 3]`` in
    and out, e.g. the VQVAE's round trip) the references are rendered through it and share the decoder's error."""
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
    """Per set and metric, the curve averaged over the videos that have the set, and its mean:
    ``{set: {metric: {"per_frame": [P] floats, "mean": float}}}``."""

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in dict.fromkeys(k for scores in per_video for k in scores):
        rows = [scores[name] for scores in per_video if name in scores]
        out[name] = {}
        for metric in rows[0]:
            curve = np.mean([row[metric] for row in rows], axis=0)
            out[name][metric] = {"per_frame": [float(x) for x in curve], "mean": float(curve.mean())}
    return out

"""Bootstrap intervals over videos and paired comparisons of two runs (numpy).

Every headline number is a statistic of per-video values; its uncertainty is a percentile bootstrap over videos:
``resamples`` draws of n video indices with replacement, the statistic on each draw, and the ``(1 − level) / 2`` and
``(1 + level) / 2`` quantiles of those values.

Pairing. The draws come from :func:`resample_indices` alone: ``np.random.default_rng(seed).integers(0, n,
(resamples, n))``, so for a given (videos, resamples, seed) every metric and every run (set) is resampled with the
same indices. Two runs evaluated on the same videos are compared by :func:`paired_difference`, the statistic of A
minus that of B on each draw, which removes the between-video variation the two runs share.

What can be bootstrapped (``data`` below), all vectorised over the resamples (2000 x 64 videos: milliseconds):

* a per-video array ``[n]``: ``statistic(values, axis=-1)`` (default ``np.mean``);
* a tuple of per-video arrays, each ``[n]``: ``statistic(*arrays, axis=-1)``, for statistics of several
  per-video quantities, e.g. the spread-skill ratio of means
  ``lambda s2, mse, axis: spread_skill_ratio(s2.mean(axis), mse.mean(axis), m)``;
* a function ``fn(idx)`` of video indices (then ``n_videos`` is required): ``idx`` is ``[n]`` for the point
  estimate and ``[resamples, n]`` for the draws, and ``fn`` must reduce its last axis (return a float, resp.
  ``[resamples]``).

The point estimate is the statistic on all videos (idx = 0..n−1), not the mean of the bootstrap values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

Data = np.ndarray | tuple | Callable[[np.ndarray], Any]


def resample_indices(n_videos: int, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """The bootstrap draws ``[resamples, n_videos]`` of video indices; the same for every metric and set."""
    if n_videos < 1 or resamples < 1:
        raise ValueError(f"need >= 1 video and >= 1 resample, got {n_videos} videos, {resamples} resamples")
    return np.random.default_rng(seed).integers(0, n_videos, size=(resamples, n_videos))


def statistic_of(data: Data, statistic: Callable = np.mean, n_videos: int | None = None) -> tuple[Callable, int]:
    """``data`` (module docstring) as ``(fn(idx), n_videos)``."""
    if callable(data):
        if n_videos is None:
            raise TypeError("a function of video indices needs n_videos")
        return data, int(n_videos)
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in (data if isinstance(data, tuple) else (data,)))
    if not arrays or any(a.ndim != 1 for a in arrays) or len({a.shape[0] for a in arrays}) != 1:
        raise ValueError(f"expected per-video arrays [n], all of one length; got shapes {[a.shape for a in arrays]}")
    n = arrays[0].shape[0]
    if n_videos is not None and n_videos != n:
        raise ValueError(f"n_videos={n_videos} but the per-video arrays have {n} values")
    return (lambda idx: statistic(*(a[idx] for a in arrays), axis=-1)), n


def _evaluate(fn: Callable, n: int, resamples: int, seed: int) -> tuple[float, np.ndarray]:
    """The statistic on all videos and on each draw."""
    point = np.asarray(fn(np.arange(n)), dtype=np.float64)
    values = np.asarray(fn(resample_indices(n, resamples, seed)), dtype=np.float64)
    if point.shape != () or values.shape != (resamples,):
        raise ValueError(
            f"the statistic must reduce the last (video) axis: got shape {point.shape} on [n] indices and "
            f"{values.shape} on [{resamples}, n] indices (expected () and ({resamples},))"
        )
    return float(point), values


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_interval(
    data: Data, resamples: int = 2000, seed: int = 0, level: float = 0.95,
    statistic: Callable = np.mean, *, n_videos: int | None = None,
) -> dict[str, Any]:
    """Percentile bootstrap interval over videos: ``{"value", "low", "high", "level", "resamples", "videos"}``.

    ``value`` is the point estimate of the statistic on all videos (the plain mean for a per-video array).
    """
    fn, n = statistic_of(data, statistic, n_videos)
    point, values = _evaluate(fn, n, resamples, seed)
    low, high = _interval(values, level)
    return {"value": point, "low": low, "high": high, "level": level, "resamples": resamples, "videos": n}


def paired_difference(
    a: Data, b: Data, higher_is_better: bool, resamples: int = 2000, seed: int = 0, level: float = 0.95,
    statistic: Callable = np.mean, *, n_videos: int | None = None,
) -> dict[str, Any]:
    """Paired bootstrap of statistic(A) − statistic(B) over the same videos (same draws for both).

    Returns ``{"diff", "low", "high", "a", "b", "level", "resamples", "videos", "higher_is_better", "verdict"}``:
    ``diff`` on all videos, the interval, both point estimates, and the verdict ``"A"`` / ``"B"`` (the better run,
    when the interval excludes 0) or ``"cannot tell"``.
    """
    fa, na = statistic_of(a, statistic, n_videos)
    fb, nb = statistic_of(b, statistic, n_videos)
    if na != nb:
        raise ValueError(f"paired runs need the same videos: A has {na}, B has {nb}")
    point_a, values_a = _evaluate(fa, na, resamples, seed)
    point_b, values_b = _evaluate(fb, nb, resamples, seed)
    low, high = _interval(values_a - values_b, level)
    rounding = 1e-9 * max(1.0, abs(point_a), abs(point_b))  # equal sets summed in another order differ by ~1e-15
    if low > rounding or high < -rounding:
        verdict = "A" if (low > 0) == bool(higher_is_better) else "B"
    else:
        verdict = "cannot tell"
    return {
        "diff": point_a - point_b, "low": low, "high": high, "a": point_a, "b": point_b, "level": level,
        "resamples": resamples, "videos": na, "higher_is_better": bool(higher_is_better), "verdict": verdict,
    }


def significant_decimals(low: float, high: float) -> int:
    """Two significant digits of the interval's width (3 decimals for a zero-width interval)."""
    width = abs(high - low)
    if not math.isfinite(width) or width == 0:
        return 3
    return max(0, 1 - math.floor(math.log10(width)))


def _fmt(x: float, decimals: int) -> str:
    text = f"{x:.{decimals}f}"
    return text.replace("-", "\u2212") if float(text) != 0 else text.lstrip("-")


def verdict_sentence(
    metric_label: str, name_a: str, name_b: str, result: dict[str, Any], unit: str = "", decimals: int | None = None
) -> str:
    """One sentence for a :func:`paired_difference` result, e.g.

    ``PSNR: ours is better than linear by 0.31 dB (95 % CI 0.12 to 0.50).`` (the winner's advantage and its
    interval, always positive) or ``SSIM: the data cannot tell ours and linear apart (difference −0.004, 95 % CI
    −0.011 to 0.003).`` (A − B). Numbers keep two significant digits of the interval's width unless ``decimals``.
    """
    d = significant_decimals(result["low"], result["high"]) if decimals is None else decimals
    unit_text = f" {unit}" if unit else ""
    ci = f"{result['level'] * 100:g} % CI"
    if result["verdict"] == "cannot tell":
        return (f"{metric_label}: the data cannot tell {name_a} and {name_b} apart (difference "
                f"{_fmt(result['diff'], d)}{unit_text}, {ci} {_fmt(result['low'], d)} to {_fmt(result['high'], d)}).")
    value, low, high = advantage(result)
    winner, loser = (name_a, name_b) if result["verdict"] == "A" else (name_b, name_a)
    return (f"{metric_label}: {winner} is better than {loser} by {_fmt(value, d)}{unit_text} "
            f"({ci} {_fmt(low, d)} to {_fmt(high, d)}).")


def advantage(result: dict[str, Any]) -> tuple[float, float, float]:
    """The winner's advantage of a decided :func:`paired_difference` result and its interval, oriented so that
    better is positive (A − B, negated when B wins or when lower is better)."""
    verdict = result["verdict"]
    if verdict not in ("A", "B"):
        raise ValueError(f"no winner in verdict {verdict!r}")
    sign = (1 if result["higher_is_better"] else -1) * (1 if verdict == "A" else -1)
    low, high = sorted((sign * result["low"], sign * result["high"]))
    return sign * result["diff"], low, high

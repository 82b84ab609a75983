"""Bootstrap intervals over videos and paired comparisons of two runs (numpy).

An interval is the percentile bootstrap over videos: the statistic on each of ``resamples`` draws of n videos
with replacement, then its ``(1 ± level) / 2`` quantiles; the point estimate is the statistic on all videos. The
draws depend only on (videos, resamples, seed) (:func:`resample_indices`), so every metric and run on the same
videos is resampled alike and :func:`paired_difference` removes the between-video variation they share.

``data`` is a per-video array ``[n]`` (``statistic(values, axis=-1)``), a tuple of them (``statistic(*arrays,
axis=-1)``, e.g. a ratio of means), or ``fn(idx)`` with ``n_videos`` given, reducing the last axis of ``idx``
(``[n]`` for the point estimate, ``[resamples, n]`` for the draws).
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
    """Percentile bootstrap interval over videos: ``{"value", "low", "high", "level", "resamples", "videos"}``."""
    fn, n = statistic_of(data, statistic, n_videos)
    point, values = _evaluate(fn, n, resamples, seed)
    low, high = _interval(values, level)
    return {"value": point, "low": low, "high": high, "level": level, "resamples": resamples, "videos": n}


def paired_difference(
    a: Data, b: Data, higher_is_better: bool, resamples: int = 2000, seed: int = 0, level: float = 0.95,
    statistic: Callable = np.mean, *, n_videos: int | None = None,
) -> dict[str, Any]:
    """Paired bootstrap of statistic(A) − statistic(B) on the same draws: ``{"diff", "low", "high", "a", "b", "level",
    "resamples", "videos", "higher_is_better", "verdict"}``, verdict "A"/"B" (the interval excludes 0) or "cannot tell".
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
    """One sentence for a :func:`paired_difference` result, e.g. ``PSNR: ours is better than linear by 0.31 dB
    (95 % CI 0.12 to 0.50).`` (the winner's advantage) or "the data cannot tell ... apart (difference ...)" (A − B)."""
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
    """(advantage, low, high) of a decided :func:`paired_difference` result, oriented so that better is positive."""
    verdict = result["verdict"]
    if verdict not in ("A", "B"):
        raise ValueError(f"no winner in verdict {verdict!r}")
    sign = (1 if result["higher_is_better"] else -1) * (1 if verdict == "A" else -1)
    low, high = sorted((sign * result["low"], sign * result["high"]))
    return sign * result["diff"], low, high

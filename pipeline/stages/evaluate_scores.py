"""Stage 4's summaries: a metric's block of metrics.json with its bootstrap interval over videos, and the
spread-skill ratio."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.eval.metrics import summarize
from pipeline.eval.scores import spread_skill_ratio
from pipeline.eval.stats import bootstrap_interval


def spread_skill_block(spread2: np.ndarray, mse: np.ndarray, members: int, bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The spread-skill ratio of means over videos and frames, with its interval and per-frame curve; 0 for one
    member (even where its error is 0)."""
    if members == 1:
        return {"value": 0.0, "low": 0.0, "high": 0.0, "per_frame": [0.0] * spread2.shape[1]}
    ratio = lambda s2, e2, axis: spread_skill_ratio(s2.mean(axis), e2.mean(axis), members)  # noqa: E731
    interval = interval_of(bootstrap_interval((spread2.mean(axis=1), mse.mean(axis=1)), statistic=ratio, **bootstrap))
    curve = spread_skill_ratio(spread2.mean(axis=0), mse.mean(axis=0), members)
    return {**interval, "per_frame": [float(x) for x in curve]}


def summarize_metric(metric: str, rows: list[np.ndarray], bootstrap: dict[str, Any]) -> dict[str, Any]:
    """One metric's block of metrics.json from its per-video rows, with a bootstrap interval over videos; PSNR/SSIM
    rows are ``[samples, frames]`` (best-of-N kept), others ``[frames]``."""
    per_frame = np.stack(rows).astype(np.float64)  # [V, (S,) P]
    if metric in ("psnr", "ssim"):
        block = summarize(per_frame)
        per_video = per_frame.mean(axis=(1, 2))
    else:
        per_video = per_frame.mean(axis=1)
        block = {"per_frame": [float(x) for x in per_frame.mean(axis=0)]}
    return {**block, **interval_of(bootstrap_interval(per_video, **bootstrap)), "per_video": [float(x) for x in per_video]}


def interval_of(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(result[k]) for k in ("value", "low", "high")}

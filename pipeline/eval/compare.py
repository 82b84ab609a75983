"""Which evaluated runs the report compares, and how: paired differences over the same videos and bootstrap draws.

Runs pair only when their protocols agree on clips and draws (:func:`comparable`). "Better" is higher or lower, the
distance from 1 for spread-skill, from the nominal level for coverages; FVD differences use per-resample values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.eval.fvd import shifted_interval
from pipeline.eval.scores import spread_skill_ratio
from pipeline.eval.stats import paired_difference, verdict_sentence

# (metric, label, unit, better: "higher" | "lower" | "one" (closer to 1) | "nominal <level>" | None, finest format)
COLUMNS = (
    ("fvd", "FVD", "", "lower", ".1f"),
    ("psnr", "PSNR (dB)", " dB", "higher", ".2f"),
    ("ssim", "SSIM", "", "higher", ".4f"),
    ("crps", "CRPS", "", "lower", ".4f"),
    ("energy", "energy score", "", "lower", ".4f"),
    ("energy_latent", "latent energy score", "", "lower", ".4f"),
    ("spread_skill", "spread/skill", "", "one", ".2f"),
    ("diversity", "diversity", "", None, ".4f"),
)
KNOWN_LAW_COLUMNS = (
    ("identity_kept", "identity kept", "", "higher", ".3f"),
    ("count_kept", "count kept", "", "higher", ".3f"),
    ("energy", "position energy score (px)", "px", "lower", ".2f"),
    ("law_distance", "distance to the true law (px)", "px", "lower", ".3f"),
    ("coverage50", "coverage of the law's 50 % region", "", "nominal 0.5", ".3f"),
    ("coverage90", "coverage of the law's 90 % region", "", "nominal 0.9", ".3f"),
)
# Sampler settings grouped into factors: variants of one checkpoint are paired only when they differ in one factor.
SAMPLER_FACTORS = {"steps": "budget", "nfe_per_frame": "budget", "solver": "budget", "grid": "grid",
                   "t_min": "grid", "t_max": "grid", "diffusion": "diffusion", "diffusion_scale": "diffusion",
                   "start_resolved": "start"}
SAMPLER_NEUTRAL = {"solver_resolved", "start", "batch_size"}  # derived, compared resolved, or changes no sample


def run_label(run: str, metrics: dict[str, Any]) -> str:
    """The run's name, with its interpolant when the name does not say it (``lr5e-4 (ours)``)."""
    interp = metrics.get("interp")
    return run if not interp or interp == run else f"{run} ({interp})"


def trained_steps(metrics: dict[str, Any]) -> int | None:
    """The training step of the checkpoint a run sampled (None when its metrics do not say)."""
    return metrics.get("protocol", {}).get("checkpoint", {}).get("ckpt_step")


def comparable(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Protocol entries that differ between the runs (pairing needs the same videos and resamples)."""
    keys = ("split", "videos", "video_ids", "real_clips_sha256", "n_samples", "clip_length", "cond_frames", "intervals")
    first = next(iter(runs.values()))["protocol"]
    diffs = [k for k in keys if any(m["protocol"].get(k) != first.get(k) for m in runs.values())]
    fvd_keys = ("videos", "generated", "i3d_sha256")
    diffs += [f"fvd.{k}" for k in fvd_keys
              if any(m["protocol"]["fvd"].get(k) != first["fvd"].get(k) for m in runs.values())]
    return diffs


def baseline(run: str, runs: dict[str, dict[str, Any]]) -> str:
    """The run a later run is paired against: the first run trained as long, else the first run."""
    earlier = list(runs)[:list(runs).index(run)]
    return next((r for r in earlier if trained_steps(runs[r]) == trained_steps(runs[run])), earlier[0])


def paired_rows(a: dict[str, Any], b: dict[str, Any], protocol: dict[str, Any], columns=COLUMNS) -> list[tuple]:
    """(label, result, unit) per metric: A − B with its interval and verdict, on the same videos and draws."""
    intervals = protocol["intervals"]
    draws = {"resamples": intervals["resamples"], "seed": intervals["seed"], "level": intervals["level"]}
    rows = []
    for metric, label, unit, better, _ in columns:
        if better is None or not (a.get(metric) and b.get(metric)):
            continue
        if better.startswith("nominal"):  # compared by the distance from the nominal level: lower is better
            level = float(better.split()[1])
            fn_a, fn_b = (_distance_from(block[metric]["per_video"], level) for block in (a, b))
            result = paired_difference(fn_a, fn_b, False, n_videos=len(a[metric]["per_video"]), **draws)
            label = f"{label}: distance from {level}"
        elif metric == "fvd":
            result = _paired_fvd(a["fvd"], b["fvd"], intervals["level"])
        elif metric == "spread_skill":  # compared by the distance from calibration, |1 − ratio|: lower is better
            if min(a["n_samples"], b["n_samples"]) == 1:
                continue  # one member has no spread: nothing to compare
            fn_a, fn_b = _calibration_error(a), _calibration_error(b)
            result = paired_difference(fn_a, fn_b, False, n_videos=len(a["mse"]["per_video"]), **draws)
            label = "spread/skill distance from 1"
        else:
            per_video = [np.asarray(block[metric]["per_video"]) for block in (a, b)]
            result = paired_difference(*per_video, better == "higher", **draws)
        if result is not None:
            rows.append((label, result, unit.strip()))
    return rows


def _distance_from(per_video: list[float], level: float):
    """|mean − level| of per-video values as a function of resampled video indices."""
    values = np.asarray(per_video)
    return lambda idx: np.abs(values[idx].mean(-1) - level)


def _calibration_error(block: dict[str, Any]):
    """|1 − spread/skill| of one scored set as a function of resampled video indices."""
    spread2, mse = (np.asarray(block[k]["per_video"]) for k in ("spread2", "mse"))
    members = block["n_samples"]
    return lambda idx: np.abs(1.0 - spread_skill_ratio(spread2[idx].mean(-1), mse[idx].mean(-1), members))


def _paired_fvd(a: dict[str, Any], b: dict[str, Any], level: float) -> dict[str, Any] | None:
    """FVD A − B from the per-resample values, with the bias-shifted interval."""
    pairs = [(x, y) for x, y in zip(a.get("values") or [], b.get("values") or []) if x is not None and y is not None]
    if not pairs:
        return None
    diff = a["value"] - b["value"]
    low, high = shifted_interval(diff, [x - y for x, y in pairs], level)
    verdict = "B" if low > 0 else "A" if high < 0 else "cannot tell"  # lower is better
    return {"diff": diff, "low": float(low), "high": float(high), "level": level,
            "higher_is_better": False, "verdict": verdict}


def law_verdicts(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Paired distance-to-the-law sentences for comparable runs that :func:`_pairing` relates."""
    sentences = []
    items = list(runs.items())
    for k, (run_a, a) in enumerate(items):
        for run_b, b in items[k + 1:]:
            what = _pairing(a, b)
            if what is None or comparable({run_a: a, run_b: b}):
                continue
            intervals = a["protocol"]["intervals"]
            values = [np.asarray(m["known_law"]["sets"]["model"]["law_distance"]["per_video"]) for m in (a, b)]
            result = paired_difference(*values, False, intervals["resamples"], intervals["seed"], intervals["level"])
            sentences.append(verdict_sentence(f"Distance to the true law, {what}", run_label(run_a, a),
                                              run_label(run_b, b), result, "px"))
    return sentences


def _pairing(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """How two runs relate: different interpolants at equal NFE per frame, or one checkpoint sampled two ways."""
    sa, sb = a["protocol"]["sampler"], b["protocol"]["sampler"]
    if a.get("interp") != b.get("interp") and sa.get("nfe_per_frame") == sb.get("nfe_per_frame") \
            and trained_steps(a) == trained_steps(b):
        return f"at {sa.get('nfe_per_frame')} network evaluations per frame, both trained {trained_steps(a)} steps"
    same_weights = a["protocol"]["checkpoint"] == b["protocol"]["checkpoint"]
    changed = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k) and k not in SAMPLER_NEUTRAL)
    factors = {SAMPLER_FACTORS.get(k, k) for k in changed}
    if a.get("interp") == b.get("interp") and same_weights and len(factors) == 1:
        return "one checkpoint sampled with different " + ", ".join(k.removesuffix("_resolved") for k in changed)
    return None

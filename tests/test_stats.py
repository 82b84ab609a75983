"""Bootstrap intervals over videos and paired verdicts: coverage, pairing, verdicts and their sentences."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.eval.scores import spread_skill_ratio
from pipeline.eval.stats import bootstrap_interval, paired_difference, resample_indices, verdict_sentence


def test_interval_fields_and_point_estimate() -> None:
    values = np.random.default_rng(0).normal(3.0, 1.0, size=64)
    r = bootstrap_interval(values)
    assert set(r) == {"value", "low", "high", "level", "resamples", "videos"}
    assert r["value"] == pytest.approx(values.mean()) and r["low"] < r["value"] < r["high"]
    assert (r["level"], r["resamples"], r["videos"]) == (0.95, 2000, 64)
    assert bootstrap_interval(values) == r  # deterministic for a seed
    assert bootstrap_interval(values, seed=1) != r
    # roughly the normal-theory interval: mean ± 1.96 s / sqrt(n)
    half = 1.96 * values.std(ddof=1) / 8
    assert (r["high"] - r["low"]) / 2 == pytest.approx(half, rel=0.15)


def test_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    for rep in range(200):
        r = bootstrap_interval(rng.normal(2.0, 1.5, size=64), seed=rep)
        covered += r["low"] <= 2.0 <= r["high"]
    assert 0.90 <= covered / 200 <= 0.98


def test_a_2000_resample_bootstrap_of_64_videos_takes_milliseconds() -> None:
    values = np.random.default_rng(2).normal(size=64)
    bootstrap_interval(values)
    start = time.perf_counter()
    for _ in range(5):
        bootstrap_interval(values)
    assert (time.perf_counter() - start) / 5 < 0.1  # ~ 5 ms here; generous for shared machines


def test_statistic_of_several_arrays_and_function_of_indices_agree() -> None:
    """A ratio of means (the spread-skill ratio) as a tuple with a statistic, and as a function of indices."""
    rng = np.random.default_rng(3)
    spread2, mse = rng.gamma(4.0, 0.05, size=40), rng.gamma(4.0, 0.06, size=40)

    def ratio(s2, e, axis):
        return spread_skill_ratio(s2.mean(axis), e.mean(axis), 4)

    by_tuple = bootstrap_interval((spread2, mse), statistic=ratio)
    by_fn = bootstrap_interval(lambda idx: spread_skill_ratio(spread2[idx].mean(-1), mse[idx].mean(-1), 4), n_videos=40)
    assert by_tuple == by_fn
    assert by_tuple["value"] == pytest.approx(np.sqrt(5 / 4 * spread2.mean()) / np.sqrt(mse.mean()))
    median = bootstrap_interval(spread2, statistic=np.median)
    assert median["value"] == pytest.approx(np.median(spread2))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(TypeError, match="n_videos"):
        bootstrap_interval(lambda idx: idx.mean(-1))
    with pytest.raises(ValueError, match="reduce the last"):
        bootstrap_interval(lambda idx: float(idx.mean()), n_videos=10)
    with pytest.raises(ValueError, match="one length"):
        bootstrap_interval((np.zeros(3), np.zeros(4)), statistic=lambda a, b, axis: a.mean(axis))
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(np.zeros(5), level=95)
    with pytest.raises(ValueError, match="same videos"):
        paired_difference(np.zeros(5), np.zeros(6), True)


# ----------------------------------------------------------------------------------------------------------
# Pairing and verdicts
# ----------------------------------------------------------------------------------------------------------


def test_every_metric_and_set_is_resampled_with_the_same_indices() -> None:
    assert np.array_equal(resample_indices(64, 2000, 7), resample_indices(64, 2000, 7))
    a = np.random.default_rng(4).normal(size=30)
    seen = []
    bootstrap_interval(lambda idx: seen.append(idx) or a[idx].mean(-1), n_videos=30, resamples=50, seed=7)
    assert np.array_equal(seen[1], resample_indices(30, 50, 7))
    # B = A + c on every video: a paired interval has zero width; with B = 0 it is A's own interval
    shifted = paired_difference(a, a + 0.25, higher_is_better=True)
    assert shifted["low"] == pytest.approx(-0.25) and shifted["high"] == pytest.approx(-0.25)
    alone, paired = bootstrap_interval(a), paired_difference(a, np.zeros(30), True)
    assert (paired["low"], paired["high"]) == pytest.approx((alone["low"], alone["high"]))


def _two_runs(rng, shift: float, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-video scores of two runs on the same videos: a shared video difficulty plus each run's own noise."""
    difficulty = rng.normal(20.0, 3.0, size=n)
    return difficulty + shift + rng.normal(0, 0.5, size=n), difficulty + rng.normal(0, 0.5, size=n)


def test_runs_from_the_same_law_cannot_be_told_apart() -> None:
    a, b = _two_runs(np.random.default_rng(0), 0.0)  # 1 seed in 20 gives a (false) verdict: here 5 and 6 do
    r = paired_difference(a, b, higher_is_better=True)
    assert r["verdict"] == "cannot tell" and r["low"] < 0 < r["high"]
    assert r["diff"] == pytest.approx(a.mean() - b.mean()) and r["a"] == pytest.approx(a.mean())


def test_same_law_verdict_rate_is_near_95_percent() -> None:
    rng = np.random.default_rng(6)
    undecided = sum(paired_difference(*_two_runs(rng, 0.0), True, resamples=1000, seed=rep)["verdict"] == "cannot tell"
                    for rep in range(200))
    assert 0.89 <= undecided / 200 <= 0.99


def test_a_clear_shift_names_the_winner_and_the_flag_flips_it() -> None:
    a, b = _two_runs(np.random.default_rng(8), 0.4)
    higher = paired_difference(a, b, higher_is_better=True)
    assert higher["verdict"] == "A" and higher["low"] > 0
    lower = paired_difference(a, b, higher_is_better=False)
    assert lower["verdict"] == "B" and (lower["low"], lower["high"]) == (higher["low"], higher["high"])
    assert paired_difference(b, a, higher_is_better=True)["verdict"] == "B"
    assert paired_difference(b, a, higher_is_better=False)["verdict"] == "A"
    # the between-video spread (std 3) would swamp a 0.4 shift without pairing
    unpaired = bootstrap_interval(a)["high"] - bootstrap_interval(a)["low"]
    assert higher["high"] - higher["low"] < unpaired / 5


def test_verdict_sentences() -> None:
    base = {"level": 0.95, "resamples": 2000, "videos": 64}
    better = {**base, "diff": 0.312, "low": 0.121, "high": 0.503, "higher_is_better": True, "verdict": "A"}
    assert verdict_sentence("PSNR", "ours", "linear", better, "dB") == (
        "PSNR: ours is better than linear by 0.31 dB (95 % CI 0.12 to 0.50).")
    tie = {**base, "diff": -0.0041, "low": -0.0112, "high": 0.0031, "higher_is_better": True, "verdict": "cannot tell"}
    assert verdict_sentence("SSIM", "ours", "linear", tie) == (
        "SSIM: the data cannot tell ours and linear apart (difference \u22120.004, 95 % CI \u22120.011 to 0.003).")
    # lower is better and A − B < 0: A wins, by a positive amount
    crps = {**base, "diff": -0.0123, "low": -0.0181, "high": -0.0062, "higher_is_better": False, "verdict": "A"}
    assert verdict_sentence("CRPS", "ours", "linear", crps) == (
        "CRPS: ours is better than linear by 0.012 (95 % CI 0.006 to 0.018).")
    # B wins on a higher-is-better metric
    worse = {**better, "diff": -0.312, "low": -0.503, "high": -0.121, "verdict": "B"}
    assert verdict_sentence("PSNR", "ours", "linear", worse, "dB", decimals=1) == (
        "PSNR: linear is better than ours by 0.3 dB (95 % CI 0.1 to 0.5).")


def test_sentence_of_a_real_result() -> None:
    a, b = _two_runs(np.random.default_rng(9), 0.4)
    sentence = verdict_sentence("PSNR", "ours", "linear", paired_difference(a, b, True), "dB")
    assert sentence.startswith("PSNR: ours is better than linear by ") and sentence.endswith(").")

"""Ensemble scores against closed forms: Gaussian CRPS and energy score, fairness, one-member reductions, spread-skill."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import gammaln, hyp1f1
from scipy.stats import norm

from pipeline.eval.scores import (
    SORTED_CRPS_FROM,
    crps_ensemble,
    diversity,
    energy_score,
    ensemble_frame_scores,
    spread_skill,
    spread_skill_ratio,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_crps(mu, sigma, y):
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def gaussian_energy(sigma: float, r: float, d: int) -> float:
    """ES of N(0, σ² I_d) at an observation at distance r from the mean: E||X − y|| − ½ E||X − X'||."""
    chi = math.exp(gammaln((d + 1) / 2) - gammaln(d / 2))  # E||Z|| / sqrt(2) for Z ~ N(0, I_d)
    return sigma * math.sqrt(2) * chi * hyp1f1(-0.5, d / 2, -(r / sigma) ** 2 / 2) - sigma * chi


def brute_crps(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    m = x.shape[0]
    skill = np.abs(x - y).mean(0)
    if m == 1:
        return skill
    pairs = sum(np.abs(x[i] - x[j]) for i in range(m) for j in range(m) if i != j)
    return skill - pairs / (2 * m * (m - 1))


# ----------------------------------------------------------------------------------------------------------
# CRPS
# ----------------------------------------------------------------------------------------------------------


def test_fair_crps_of_many_small_gaussian_ensembles_is_the_gaussian_crps() -> None:
    """The fair estimator is unbiased for every m: the mean over 100k four-member ensembles hits the closed form,
    where the plain (biased) estimator would be off by E|X − X'| / (2m) ≈ 0.14."""
    g = torch.Generator().manual_seed(0)
    ys = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0], dtype=torch.float64)
    mu, sigma = 0.3, 1.5
    samples = mu + sigma * torch.randn(4, 5, 100_000, generator=g, dtype=torch.float64)
    truth = ys[:, None].expand(5, 100_000)
    got = crps_ensemble(samples, truth).mean(-1).numpy()
    np.testing.assert_allclose(got, gaussian_crps(mu, sigma, ys.numpy()), atol=0.02)


def test_crps_of_one_large_gaussian_ensemble() -> None:
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    truth = torch.tensor([-1.0, 0.0, 2.5], dtype=torch.float64)
    np.testing.assert_allclose(crps_ensemble(samples, truth).numpy(), gaussian_crps(0.0, 1.0, truth.numpy()), atol=0.03)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 16, SORTED_CRPS_FROM - 1, SORTED_CRPS_FROM, 80])
def test_crps_both_forms_match_the_definition(m: int) -> None:
    rng = np.random.default_rng(m)
    x, y = rng.normal(size=(m, 3, 7)), rng.normal(size=(3, 7))
    got = crps_ensemble(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(got, brute_crps(x, y), rtol=1e-10, atol=1e-12)


def test_crps_identical_members_and_one_member_are_the_absolute_error() -> None:
    rng = np.random.default_rng(2)
    pred, truth = torch.from_numpy(rng.normal(size=(6, 5))), torch.from_numpy(rng.normal(size=(6, 5)))
    mae = (pred - truth).abs()
    torch.testing.assert_close(crps_ensemble(pred[None], truth), mae)
    torch.testing.assert_close(crps_ensemble(pred.expand(5, 6, 5), truth), mae)


def test_crps_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="samples"):
        crps_ensemble(torch.zeros(3, 4, 5), torch.zeros(4, 6))


# ----------------------------------------------------------------------------------------------------------
# Energy score
# ----------------------------------------------------------------------------------------------------------


def test_energy_score_in_one_dimension_is_the_crps() -> None:
    rng = np.random.default_rng(3)
    x, y = torch.from_numpy(rng.normal(size=(5, 4, 6))), torch.from_numpy(rng.normal(size=(4, 6)))
    crps = crps_ensemble(x, y)
    torch.testing.assert_close(energy_score(x, y, event_dims=0), crps)
    torch.testing.assert_close(energy_score(x[..., None], y[..., None], event_dims=1), crps)


def test_energy_score_identical_members_is_the_error_norm_and_rms_divides_by_sqrt_d() -> None:
    rng = np.random.default_rng(4)
    pred, truth = torch.from_numpy(rng.normal(size=(3, 8, 8))), torch.from_numpy(rng.normal(size=(3, 8, 8)))
    err = (pred - truth).flatten(1).norm(dim=1)
    torch.testing.assert_close(energy_score(pred[None], truth, event_dims=2), err)
    torch.testing.assert_close(energy_score(pred.expand(4, 3, 8, 8), truth, event_dims=2), err)
    rmse = (pred - truth).square().flatten(1).mean(1).sqrt()
    torch.testing.assert_close(energy_score(pred[None], truth, event_dims=2, rms=True), rmse)


@pytest.mark.parametrize("d, r", [(3, 0.0), (3, 2.0), (8, 1.5)])
def test_fair_energy_score_of_small_gaussian_ensembles_is_the_closed_form(d: int, r: float) -> None:
    """Mean fair ES of 40k four-member ensembles from N(0, σ² I_d) vs the closed form (noncentral chi mean)."""
    g = torch.Generator().manual_seed(d)
    sigma = 0.7
    samples = sigma * torch.randn(4, 40_000, d, generator=g, dtype=torch.float64)
    truth = torch.zeros(40_000, d, dtype=torch.float64)
    truth[:, 0] = r
    got = energy_score(samples, truth, event_dims=1).mean().item()
    assert got == pytest.approx(gaussian_energy(sigma, r, d), abs=0.015)


def test_energy_score_events_of_several_dims_are_flattened() -> None:
    rng = np.random.default_rng(5)
    x, y = torch.from_numpy(rng.normal(size=(3, 2, 4, 5))), torch.from_numpy(rng.normal(size=(2, 4, 5)))
    torch.testing.assert_close(energy_score(x, y, event_dims=2), energy_score(x.flatten(2), y.flatten(1), event_dims=1))


# ----------------------------------------------------------------------------------------------------------
# Spread-skill, diversity
# ----------------------------------------------------------------------------------------------------------


def _calibrated(m: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truth and m members iid from the same law, which differs from element to element."""
    g = torch.Generator().manual_seed(seed)
    mu, sigma = torch.randn(n, generator=g, dtype=torch.float64), 0.2 + torch.rand(n, generator=g, dtype=torch.float64)
    draws = mu + sigma * torch.randn(m + 1, n, generator=g, dtype=torch.float64)
    return draws[1:], draws[0]


def test_spread_skill_ratio_is_one_for_an_ensemble_from_the_truths_law() -> None:
    m = 4
    samples, truth = _calibrated(m, 200_000, 6)
    spread2, mse = spread_skill(samples, truth)
    assert spread_skill_ratio(spread2.item(), mse.item(), m) == pytest.approx(1.0, abs=0.02)
    # without the (m+1)/m correction the same calibrated ensemble would look under-dispersed
    assert math.sqrt(spread2.item() / mse.item()) == pytest.approx(math.sqrt(m / (m + 1)), abs=0.02)


def test_spread_skill_ratio_of_a_shrunken_ensemble_is_below_one() -> None:
    m = 4
    samples, truth = _calibrated(m, 200_000, 7)
    shrunk = samples.mean(0) + 0.5 * (samples - samples.mean(0))
    ratio = spread_skill_ratio(*(v.item() for v in spread_skill(shrunk, truth)), m)
    assert ratio == pytest.approx(0.5, abs=0.02)


def test_spread_skill_one_member_and_event_dims() -> None:
    pred, truth = torch.full((1, 2, 3), 0.5), torch.zeros(2, 3)
    spread2, mse = spread_skill(pred, truth, event_dims=1)
    assert spread2.tolist() == [0.0, 0.0] and mse.tolist() == [0.25, 0.25]
    assert spread_skill_ratio(0.0, 0.25, 1) == 0.0
    np.testing.assert_allclose(spread_skill_ratio(np.array([1.0, 4.0]), np.array([2.0, 2.0]), 1), [1.0, 2.0])


def test_diversity_of_two_members_and_of_identical_members() -> None:
    a, b = torch.zeros(4, 4), torch.full((4, 4), 0.5)
    b[0, 0] = 2.5  # squared differences: fifteen 0.25 and one 6.25 -> RMS sqrt(10 / 16)
    assert diversity(torch.stack([a, b])).item() == pytest.approx(math.sqrt(10 / 16))
    assert diversity(torch.stack([a, b, b])).item() == pytest.approx(2 / 3 * math.sqrt(10 / 16))
    assert diversity(b.expand(3, 4, 4)).item() == 0.0
    assert diversity(b[None]).item() == 0.0
    torch.testing.assert_close(diversity(torch.stack([a, b]), event_dims=1), torch.tensor([math.sqrt(7 / 4), 0.5, 0.5, 0.5], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------------
# Per-frame scores of a video
# ----------------------------------------------------------------------------------------------------------


def test_frame_scores_of_one_member_are_the_deterministic_errors() -> None:
    """Copy-last / the VQ reconstruction: CRPS = MAE, ES = RMSE, no spread, no diversity, per frame."""
    rng = np.random.default_rng(8)
    pred, truth = rng.integers(0, 256, size=(1, 3, 8, 8, 3), dtype=np.uint8), rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    s = ensemble_frame_scores(pred, truth)
    err = (pred[0] / 127.5 - 1) - (truth / 127.5 - 1)
    np.testing.assert_allclose(s["crps"], np.abs(err).mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(s["energy"], np.sqrt((err**2).mean(axis=(1, 2, 3))), rtol=1e-6)
    np.testing.assert_allclose(s["mse"], (err**2).mean(axis=(1, 2, 3)), rtol=1e-6)
    assert not s["spread2"].any() and not s["diversity"].any()
    assert all(v.dtype == np.float64 and v.shape == (3,) for v in s.values())


def test_frame_scores_match_the_functions_frame_by_frame() -> None:
    rng = np.random.default_rng(9)
    samples = rng.integers(0, 256, size=(4, 3, 6, 5, 3), dtype=np.uint8)
    truth = rng.integers(0, 256, size=(3, 6, 5, 3), dtype=np.uint8)
    s = ensemble_frame_scores(samples, truth)
    x, y = torch.from_numpy(samples / 127.5 - 1), torch.from_numpy(truth / 127.5 - 1)
    for f in range(3):
        assert s["crps"][f] == pytest.approx(crps_ensemble(x[:, f], y[f]).mean().item(), rel=1e-6)
        assert s["energy"][f] == pytest.approx(energy_score(x[:, f], y[f], 3, rms=True).item(), rel=1e-6)
        spread2, mse = spread_skill(x[:, f], y[f])
        assert (s["spread2"][f], s["mse"][f]) == pytest.approx((spread2.item(), mse.item()), rel=1e-6)
        assert s["diversity"][f] == pytest.approx(diversity(x[:, f]).item(), rel=1e-6)
    float_scores = ensemble_frame_scores(torch.from_numpy(samples).float() / 127.5 - 1, torch.from_numpy(truth).float() / 127.5 - 1)
    for name, value in s.items():
        np.testing.assert_allclose(float_scores[name], value, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_frame_scores_on_cuda_match_cpu() -> None:
    g = torch.Generator().manual_seed(10)
    samples, truth = torch.rand(4, 3, 16, 16, 3, generator=g) * 2 - 1, torch.rand(3, 16, 16, 3, generator=g) * 2 - 1
    cpu, gpu = ensemble_frame_scores(samples, truth), ensemble_frame_scores(samples.cuda(), truth.cuda())
    for name in cpu:
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# Cross-check against scoringrules (dev-only, Python >= 3.11)
# ----------------------------------------------------------------------------------------------------------


def test_matches_scoringrules_fair_estimators() -> None:
    sr = pytest.importorskip("scoringrules")
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(5, 4, 6)), rng.normal(size=(4, 6))
    ours = crps_ensemble(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(ours, sr.crps_ensemble(y, x, m_axis=0, estimator="fair", backend="numpy"), rtol=1e-10)
    ours_es = energy_score(torch.from_numpy(x), torch.from_numpy(y), event_dims=1).numpy()
    theirs = sr.es_ensemble(y, np.moveaxis(x, 0, 1), m_axis=-2, v_axis=-1, estimator="fair", backend="numpy")
    np.testing.assert_allclose(ours_es, theirs, rtol=1e-10)

"""Metric definitions: Fréchet distance against closed forms, PSNR/SSIM conventions, best-of-N, I3D batching."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from i3d_stub import save_stub_i3d

from pipeline.metrics import (
    PSNR_CAP_DB,
    I3DFeatures,
    bootstrap_fvd,
    frame_scores,
    frechet_distance,
    fvd_from_features,
    load_i3d,
    summarize,
)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_identical_sets_is_zero() -> None:
    feats = np.random.default_rng(0).normal(size=(64, 16))
    assert abs(fvd_from_features(feats, feats)) < 1e-6


def test_frechet_diagonal_gaussians_closed_form() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # Large samples from those Gaussians: the estimate from features converges to the same value.
    a = mu1 + np.sqrt(s1) * rng.normal(size=(40_000, 5))
    b = mu2 + np.sqrt(s2) * rng.normal(size=(40_000, 5))
    assert fvd_from_features(a, b) == pytest.approx(expected, abs=0.05 * expected + 0.02)


def test_frechet_full_covariances_match_symmetric_form() -> None:
    """Tr sqrtm(S1 S2) = Tr sqrtm(S1^1/2 S2 S1^1/2) (the latter symmetric PSD, computed by eigh)."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    r1 = _sqrtm_psd(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * _sqrtm_psd(r1 @ s2 @ r1))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_psnr_ssim_conventions() -> None:
    """Data range 2 on x/127.5-1; identical frames: PSNR capped at 10 log10(4/1e-10), SSIM 1; no torchvision."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, size=(2, 3, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, size=a.shape), 0, 255).astype(np.uint8)
    same = frame_scores(a, a)
    assert same["psnr"].shape == (2, 3) and np.all(same["psnr"] == PSNR_CAP_DB)
    assert PSNR_CAP_DB == pytest.approx(106.0206, abs=1e-3)
    assert np.allclose(same["ssim"], 1.0)
    diff = frame_scores(b, a, frame_batch=4)
    mse = ((b / 127.5 - a / 127.5) ** 2).mean(axis=(2, 3, 4))
    assert np.allclose(diff["psnr"], 10 * np.log10(4.0 / mse), atol=1e-3)
    assert np.all(diff["ssim"] < 1.0)
    assert "torchvision" not in sys.modules


def test_best_of_n_picks_the_perfect_sample() -> None:
    scores = np.full((3, 4, 5), 20.0)
    scores[:, :, 0] = 25.0  # a good first frame everywhere (per-frame curve check)
    for v, s in enumerate([2, 0, 3]):
        scores[v, s] = PSNR_CAP_DB
    out = summarize(scores)
    assert out["best_sample"] == [2, 0, 3]
    assert out["best_of_n"] == pytest.approx(PSNR_CAP_DB)
    assert out["mean"] < out["best_of_n"]
    assert out["per_frame"][0] > out["per_frame"][1]
    assert out["per_frame_best_of_n"] == pytest.approx([PSNR_CAP_DB] * 5)


def test_i3d_features_batch_size_does_not_matter(tmp_path) -> None:
    detector = load_i3d(save_stub_i3d(tmp_path / "i3d.pt"), torch.device("cpu"))
    clips = np.random.default_rng(4).integers(0, 256, size=(5, 6, 16, 16, 3), dtype=np.uint8)
    one, four = I3DFeatures(detector, 1, torch.device("cpu")), I3DFeatures(detector, 4, torch.device("cpu"))
    one.add(clips)
    for clip in clips:
        four.add(clip[None])
    f1, f4 = one.result(), four.result()
    assert f1.shape == (5, 400) and f1.dtype == np.float64
    assert np.allclose(f1, f4, atol=1e-6)


def test_bootstrap_is_seeded_and_paired() -> None:
    """8-d features keep it fast (sqrtm of 400 x 400 costs ~1 s on a busy 2-core machine)."""
    real = np.random.default_rng(5).normal(size=(20, 8))
    gen = {"shifted": real[:, None] + 1.0, "same_twice": np.repeat(real[:, None], 2, axis=1)}
    boot = bootstrap_fvd(real, gen, resamples=5, seed=0)
    assert boot == bootstrap_fvd(real, gen, resamples=5, seed=0)
    assert boot["shifted"]["resamples"] == 5
    assert boot["shifted"]["mean"] == pytest.approx(8.0, abs=1e-6)  # a pure mean shift: |1|^2 per dimension
    assert abs(boot["same_twice"]["mean"]) < 0.5 and boot["shifted"]["std"] < 1e-6


def test_wrong_detector_output_is_named(tmp_path) -> None:
    class NotI3D(torch.nn.Module):
        def forward(self, x, rescale=False, resize=True, return_features=True):
            return x.mean(dim=(2, 3, 4))  # [N, 3], not [N, 400]

    bank = I3DFeatures(NotI3D(), 2, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="400"):
        bank.add(np.zeros((2, 4, 8, 8, 3), np.uint8))

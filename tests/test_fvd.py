"""FVD: Fréchet distance against closed forms and scipy, the cross-Gram form, feature batching and caching, intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from i3d_stub import save_stub_i3d

from pipeline.eval.fvd import (
    I3DFeatures,
    clips_digest,
    frechet_distance,
    fvd_from_features,
    fvd_with_intervals,
    load_detector,
    set_features,
)
from pipeline.eval.stats import resample_indices


def test_frechet_identical_sets_is_zero() -> None:
    feats = np.random.default_rng(0).normal(size=(64, 16))
    assert abs(fvd_from_features(feats, feats)) < 1e-8


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


def test_frechet_full_covariances_match_scipy_sqrtm() -> None:
    from scipy import linalg

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(np.real(linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("clips", [(12, 9), (40, 30)], ids=["fewer clips than dimensions", "more clips"])
def test_cross_gram_form_equals_the_moment_form(clips) -> None:
    """Few clips (the usual FVD case): the nuclear norm of the n x m cross-Gram equals tr sqrt(S1 S2) in D x D."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(clips[0], 20))
    b = 0.5 * rng.normal(size=(clips[1], 20)) @ rng.normal(size=(20, 20)) + 0.3
    moments = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fvd_from_features(a, b) == pytest.approx(moments, rel=1e-7)  # eigh's sqrt of ~0 eigenvalues: ~1e-8


def test_fvd_of_a_set_against_itself_is_zero_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(4)
    real = rng.normal(size=(64, 400))
    other = rng.normal(size=(64, 400))  # the same law, an independent draw: the small-sample bias only
    shifts = [fvd_from_features(real, other + delta) for delta in (0.0, 0.1, 0.3, 1.0)]
    assert abs(fvd_from_features(real, real)) < 1e-6
    assert shifts == sorted(shifts) and shifts[-1] - shifts[0] == pytest.approx(400.0, rel=0.05)  # |delta|^2 * 400


def test_intervals_are_seeded_paired_and_cover_the_point() -> None:
    rng = np.random.default_rng(5)
    real = rng.normal(size=(20, 8))
    gen = {"shifted": real[:, None] + 1.0, "noisy": real[:, None] + rng.normal(scale=0.5, size=(20, 2, 8))}
    indices = resample_indices(20, 50, seed=0)
    first = fvd_with_intervals(real, gen, indices, 0.95)
    assert first == fvd_with_intervals(real, gen, resample_indices(20, 50, seed=0), 0.95)
    shifted = first["shifted"]
    assert shifted["value"] == pytest.approx(8.0, abs=1e-9)  # a pure mean shift: |1|^2 per dimension
    assert shifted["low"] == pytest.approx(8.0, abs=1e-9) and shifted["high"] == pytest.approx(8.0, abs=1e-9)
    noisy = first["noisy"]
    assert noisy["low"] <= noisy["value"] <= noisy["high"] and len(noisy["values"]) == 50
    assert fvd_with_intervals(real, gen, None, 0.95)["noisy"]["low"] is None


def test_features_batch_size_does_not_matter(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("I3D_TRUST_CODE", "1")  # the stub is TorchScript, trusted: ours
    detector = load_detector(str(save_stub_i3d(tmp_path / "i3d.pt")), torch.device("cpu"))
    clips = np.random.default_rng(6).integers(0, 256, size=(5, 6, 16, 16, 3), dtype=np.uint8)
    one, four = I3DFeatures(detector.net, 1, torch.device("cpu")), I3DFeatures(detector.net, 4, torch.device("cpu"))
    one.add(clips)
    for clip in clips:
        four.add(clip[None])
    f1, f4 = one.result(), four.result()
    assert f1.shape == (5, 400) and f1.dtype == np.float64
    assert np.allclose(f1, f4, atol=1e-6)


def test_feature_cache_is_keyed_by_content(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("I3D_TRUST_CODE", "1")  # the stub is TorchScript, trusted: ours
    detector = load_detector(str(save_stub_i3d(tmp_path / "i3d.pt")), torch.device("cpu"))
    clips = np.random.default_rng(7).integers(0, 256, size=(3, 6, 16, 16, 3), dtype=np.uint8)
    source = lambda: (clips[v][None] for v in range(3))  # noqa: E731
    first, hit = set_features("real", source, detector, 2, torch.device("cpu"), tmp_path / "cache", print)
    again, hit_again = set_features("real", source, detector, 2, torch.device("cpu"), tmp_path / "cache", print)
    assert not hit and hit_again and np.array_equal(first, again)
    clips[1, 2, 3, 4, 0] ^= 1  # one changed pixel value: a different key, computed afresh
    _, hit_changed = set_features("real", source, detector, 2, torch.device("cpu"), tmp_path / "cache", print)
    assert not hit_changed and len(list((tmp_path / "cache").glob("real-*.npy"))) == 2
    assert clips_digest([clips[0]]) != clips_digest([clips[0][:-1]])


def test_wrong_detector_output_is_named() -> None:
    class NotI3D(torch.nn.Module):
        def forward(self, x, rescale=False, resize=True, return_features=True):
            return x.mean(dim=(2, 3, 4))  # [N, 3], not [N, 400]

    bank = I3DFeatures(NotI3D(), 2, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="400"):
        bank.add(np.zeros((2, 4, 8, 8, 3), np.uint8))

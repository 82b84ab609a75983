"""Metric definitions: PSNR/SSIM conventions and best-of-N (FVD: test_fvd.py; ensemble scores: test_scores.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pipeline.eval.metrics import PSNR_CAP_DB, frame_scores, summarize


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
    assert out["value"] < out["best_of_n"]
    assert out["per_frame"][0] > out["per_frame"][1]
    assert out["per_frame_best_of_n"] == pytest.approx([PSNR_CAP_DB] * 5)

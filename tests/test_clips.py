"""Clip sampling follows docs/METHOD.md §1.4 with the off-by-one fixed; short videos are skipped, not fatal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.clips import (
    PixelClipDataset,
    clip_frame_indices,
    clip_span,
    eligible_videos,
    sample_clip_start,
    to_model_range,
    to_uint8,
)
from pipeline.data.shards import ShardReader, ShardWriter


def test_span_matches_reference_numbers() -> None:
    assert clip_span(40, 0) == 40  # KTH
    assert clip_span(16, 4) == 76  # CLEVRER
    np.testing.assert_array_equal(clip_frame_indices(3, 4, 4), [3, 8, 13, 18])


def test_start_is_uniform_over_every_valid_start() -> None:
    rng = np.random.default_rng(0)
    length, span, draws = 50, 40, 44_000
    starts = np.array([sample_clip_start(length, span, rng) for _ in range(draws)])
    counts = np.bincount(starts, minlength=11)
    assert counts.shape == (11,) and counts.min() > 0  # start n - S = 10 is drawn (the reference never draws it)
    expected = draws / 11
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 29.6  # chi-square, 10 degrees of freedom, p = 0.001


def test_video_exactly_one_clip_long_works() -> None:
    assert sample_clip_start(40, 40, np.random.default_rng(0)) == 0
    with pytest.raises(ValueError):
        sample_clip_start(39, 40, np.random.default_rng(0))


def test_short_videos_skipped_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="skipping 2 of 4 videos"):
        keep = eligible_videos(np.array([10, 40, 39, 41]), 40)
    np.testing.assert_array_equal(keep, [1, 3])
    with pytest.raises(ValueError, match="no video is long enough"):
        eligible_videos(np.array([3]), 40)


def test_pixel_range_round_trip() -> None:
    frames = np.arange(256, dtype=np.uint8).reshape(1, 4, 64, 1).repeat(3, axis=-1)
    pixels = to_model_range(frames)
    assert pixels.shape == (1, 3, 4, 64) and pixels.min() == -1 and pixels.max() == 1
    np.testing.assert_array_equal(to_uint8(pixels), frames)


def test_pixel_clip_dataset_reads_strided_clips(tmp_path: Path) -> None:
    videos = [np.full((n, 8, 8, 3), 0, dtype=np.uint8) for n in (12, 5, 20)]
    for video in videos:
        video[:, 0, 0, 0] = np.arange(len(video))  # frame index written into a pixel
    with ShardWriter(tmp_path / "train") as writer:
        for video in videos:
            writer.add(video)
    with pytest.warns(UserWarning, match="skipping 1 of 3"):
        dataset = PixelClipDataset(ShardReader(tmp_path / "train"), frames_per_sample=4, skip_frames=2)
    assert len(dataset) == 2
    for item in range(2):
        clip = dataset[item]
        assert clip.shape == (4, 3, 8, 8)
        index = torch.round((clip[:, 0, 0, 0] + 1) * 127.5).long()
        assert torch.all(index.diff() == 3)

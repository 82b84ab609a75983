"""Clip sampling (docs/METHOD.md §1.4): ``T`` frames every ``skip + 1`` raw frames span ``S = (skip + 1)(T − 1) + 1``;
the start is uniform on ``{0, …, n − S}`` (the reference's draw missed the last start). Shorter videos are skipped
with one warning.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.shards import ShardReader


def clip_span(frames_per_sample: int, skip_frames: int) -> int:
    """Raw frames covered by a clip of ``frames_per_sample`` frames with stride ``skip_frames + 1``."""
    return (skip_frames + 1) * (frames_per_sample - 1) + 1


def eligible_videos(lengths: np.ndarray, span: int, what: str = "split") -> np.ndarray:
    """Indices of videos long enough for a clip; warns once with the count of skipped ones."""
    lengths = np.asarray(lengths)
    keep = np.flatnonzero(lengths >= span)
    skipped = len(lengths) - len(keep)
    if skipped:
        warnings.warn(f"{what}: skipping {skipped} of {len(lengths)} videos shorter than a clip ({span} raw frames)")
    if len(keep) == 0:
        raise ValueError(f"{what}: no video is long enough for a clip of {span} raw frames")
    return keep


def sample_clip_start(length: int, span: int, rng: np.random.Generator) -> int:
    """A start uniform on ``{0, …, length − span}`` (every valid start, the last one included)."""
    if length < span:
        raise ValueError(f"video of {length} frames cannot hold a clip of {span} raw frames")
    return int(rng.integers(0, length - span + 1))


def clip_frame_indices(start: int, frames_per_sample: int, skip_frames: int) -> np.ndarray:
    """Raw frame indices of the clip starting at ``start``."""
    return start + (skip_frames + 1) * np.arange(frames_per_sample)


def to_model_range(frames: np.ndarray) -> torch.Tensor:
    """``uint8 [..., H, W, 3]`` → ``float32 [..., 3, H, W]`` in [−1, 1] (``x / 127.5 − 1``, as the reference)."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return tensor.movedim(-1, -3)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``float [..., 3, H, W]`` in [−1, 1] → ``uint8 [..., H, W, 3]`` (clamped, rounded)."""
    scaled = ((pixels.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.movedim(-3, -1).cpu().numpy()


class PixelClipDataset(Dataset):
    """Item i: a random clip ``float32 [T, 3, H, W]`` in [−1, 1] of video ``eligible[i]``, its start drawn from
    a stream seeded by (seed, worker, draw count, item)."""

    def __init__(self, reader: ShardReader, frames_per_sample: int, skip_frames: int, seed: int = 0):
        self.reader = reader
        self.frames_per_sample = frames_per_sample
        self.skip_frames = skip_frames
        self.span = clip_span(frames_per_sample, skip_frames)
        self.eligible = eligible_videos(reader.lengths, self.span, what=str(reader.path))
        self.seed = seed
        self._draws = 0

    def __len__(self) -> int:
        return len(self.eligible)

    def __getitem__(self, item: int) -> torch.Tensor:
        video = int(self.eligible[item])
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, worker, self._draws, item])
        self._draws += 1
        start = sample_clip_start(int(self.reader.lengths[video]), self.span, rng)
        indices = clip_frame_indices(start, self.frames_per_sample, self.skip_frames)
        return to_model_range(self.reader.read_frames(video, indices))

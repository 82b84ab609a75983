"""Batches of (target, reference, context, gap, view) latent triplets from the cache, drawn as the reference's
clips are (docs/METHOD.md §1.4, §4.1, §8) but reading only the three frames:

* video uniform (with replacement) over those that hold a clip; start uniform on ``{0, …, n − S}``;
* target ``d ~ UniformInt{2, …, T − 1}``, reference ``r = d − 1``, context ``c = ⌊u·(d − 1)⌋``, ``u ~ U[0, 1)``,
  gap ``r − c ≥ 1``; clip index ``i`` is raw frame ``start + (skip + 1)·i``;
* one view uniform among :func:`pipeline.data.views.training_views`.

The global batch of step ``s`` is a pure function of ``(seed, s)``, drawn whole (indices only) by every process,
which reads its own slice: resumes, DataLoader workers and a change of the process count need no state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.core.latent_norm import LatentNorm
from pipeline.data.cache import LatentSplit
from pipeline.data.clips import clip_span, eligible_videos
from pipeline.data.views import training_views


@dataclass(frozen=True)
class TripletIndices:
    """Where each example of a batch comes from (all arrays of length B)."""

    video: np.ndarray
    start: np.ndarray
    target: np.ndarray  # clip indices d, r, c
    reference: np.ndarray
    context: np.ndarray
    view: np.ndarray

    @property
    def gap(self) -> np.ndarray:
        return self.reference - self.context

    def take(self, rows: slice) -> "TripletIndices":
        """The examples ``rows`` of the batch."""
        return TripletIndices(*(getattr(self, f)[rows] for f in ("video", "start", "target", "reference", "context", "view")))


def draw_triplets(
    rng: np.random.Generator, lengths: np.ndarray, eligible: np.ndarray, frames_per_sample: int, skip_frames: int,
    n_views: int | np.ndarray, batch_size: int,
) -> TripletIndices:
    """B triplets' indices (module doc); ``n_views`` is a view count or the array of view indices to draw from."""
    span = clip_span(frames_per_sample, skip_frames)
    video = eligible[rng.integers(0, len(eligible), size=batch_size)]
    start = rng.integers(0, lengths[video] - span + 1)
    target = rng.integers(2, frames_per_sample, size=batch_size)
    reference = target - 1
    context = np.floor(rng.random(batch_size) * (target - 1)).astype(np.int64)
    views = np.arange(n_views) if np.ndim(n_views) == 0 else np.asarray(n_views, dtype=np.int64)
    view = views[rng.integers(0, len(views), size=batch_size)]  # = rng.integers(0, n) for all n views
    return TripletIndices(video, start, target, reference, context, view)


def auto_in_memory(split: LatentSplit, mode: str, memory_fraction: float) -> bool:
    """Whether to hold the split in RAM: ``yes``/``no``, or ``auto`` when it fits in a fraction of available RAM."""
    if mode != "auto":
        return mode == "yes"
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return split.nbytes <= memory_fraction * available


class TripletReader:
    """Draws triplet batches from one split of the latent store, in the flow's coordinates (``norm``)."""

    def __init__(self, split: LatentSplit, frames_per_sample: int, skip_frames: int, norm: LatentNorm = LatentNorm()):
        self.split = split
        self.frames_per_sample = frames_per_sample
        self.skip_frames = skip_frames
        self.norm = norm
        self.stride = skip_frames + 1
        self.eligible = eligible_videos(split.lengths, clip_span(frames_per_sample, skip_frames), what=f"{split.url}:{split.split}")
        self.views = np.asarray(training_views(split.attrs.get("views"), split.n_views), dtype=np.int64)

    def indices(self, rng: np.random.Generator, batch_size: int) -> TripletIndices:
        return draw_triplets(rng, self.split.lengths, self.eligible, self.frames_per_sample, self.skip_frames, self.views, batch_size)

    def read(self, idx: TripletIndices) -> dict[str, torch.Tensor]:
        """Latents for the indices: target/reference/context ``float32 [B, C, h, w]``, gap ``[B]``, view ``[B]``."""
        base = self.split.offsets[idx.video] + idx.start
        frames = np.concatenate([base + self.stride * idx.target, base + self.stride * idx.reference, base + self.stride * idx.context])
        latents = self.norm.to_flow(torch.from_numpy(self.split.read_frames(np.tile(idx.view, 3), frames)).float())
        target, reference, context = latents.chunk(3)
        return {
            "target": target, "reference": reference, "context": context,
            "gap": torch.from_numpy(idx.gap.astype(np.float32)), "view": torch.from_numpy(idx.view),
        }

    def batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        return self.read(self.indices(rng, batch_size))


class TripletStream(IterableDataset):
    """One batch per step from ``start_step`` (forever, or ``num_steps``): process ``rank``'s slice of the step's
    global batch of ``global_batch`` examples (module doc). For ``DataLoader(batch_size=None)``: worker w of W makes
    the steps s with s % W == w, the DataLoader's order, so the stream ignores W."""

    STREAM = 0  # the draws' key beside (seed, step): 0 keeps the global batches of single-process runs as they were

    def __init__(self, reader: TripletReader, global_batch: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, num_steps: int | None = None):
        if global_batch % world_size:
            raise ValueError(f"a global batch of {global_batch} does not split over {world_size} processes")
        self.reader, self.global_batch, self.seed = reader, global_batch, seed
        local = global_batch // world_size
        self.rows = slice(rank * local, (rank + 1) * local)
        self.start_step, self.num_steps = start_step, num_steps

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        step = self.start_step + worker
        end = None if self.num_steps is None else self.start_step + self.num_steps
        while end is None or step < end:
            rng = np.random.default_rng([self.seed, self.STREAM, step])
            batch = self.reader.read(self.reader.indices(rng, self.global_batch).take(self.rows))
            batch["step"] = torch.tensor(step)
            yield batch
            step += workers

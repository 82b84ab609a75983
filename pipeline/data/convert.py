"""Raw videos (files via imageio's ffmpeg, or image folders in natural order) → shards, resized to ``S × S``
(Pillow bicubic) after ``squash`` (the reference: whole frame, aspect distorted) or ``crop`` (centre square).

Split rules: ``kth`` (``personNN_<action>_dK``, ``kth_classes`` only; by person, literature 1–16 train, 17–25 test,
or by scenario, reference README d1, d2 → train, d3 → val, d4 → test); ``clevrer`` (``video_NNNNN`` by the official
id ranges); ``folders`` (``<raw>/<split>/<video>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import imageio.v3 as iio
import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.run.config import ConvertConfig
from pipeline.data.shards import ShardWriter, natural_key

VIDEO_SUFFIXES = {".avi", ".mp4", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".gif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
KTH_NAME = re.compile(r"person(\d\d)_([a-z]+)_d(\d)")
CLEVRER_NAME = re.compile(r"video_(\d+)")
KTH_SCENARIO_SPLITS = {1: "train", 2: "train", 3: "val", 4: "test"}


class ConvertError(RuntimeError):
    """A raw source cannot be converted; the message names the file."""


@dataclass(frozen=True)
class Source:
    """One raw video: a video file or a directory of frames, its display name and assigned split."""

    path: Path
    name: str
    split: str


def find_raw_videos(raw: Path) -> list[Path]:
    """Every video file and every directory that directly holds image files, under ``raw``, naturally sorted."""
    if not raw.is_dir():
        raise ConvertError(f"{raw}: raw data directory does not exist")
    found = [p for p in raw.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    frame_dirs = {p.parent for p in raw.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    return sorted([*found, *frame_dirs], key=lambda p: natural_key(str(p.relative_to(raw))))


def video_name(path: Path) -> str:
    """Display name of a source: file stem without KTH's ``_uncomp`` suffix, or the frame directory name."""
    stem = path.stem if path.is_file() else path.name
    return stem.removesuffix("_uncomp")


def kth_split(name: str, cfg: ConvertConfig) -> str | None:
    """Split of a KTH video by ``cfg.kth_split``, or None when its class is not kept or its person is unassigned."""
    match = KTH_NAME.search(name)
    if match is None:
        raise ConvertError(f"{name}: not a KTH name (expected personNN_<action>_dK)")
    person, action, scenario = int(match[1]), match[2], int(match[3])
    if action not in cfg.kth_classes:
        return None
    if cfg.kth_split == "scenario":
        return KTH_SCENARIO_SPLITS.get(scenario)
    for split, persons in (("train", cfg.kth_train_persons), ("val", cfg.kth_val_persons), ("test", cfg.kth_test_persons)):
        if person in persons:
            return split
    return None


def clevrer_split(name: str, cfg: ConvertConfig) -> str | None:
    """Split of a CLEVRER video from its id and the official ranges."""
    match = CLEVRER_NAME.search(name)
    if match is None:
        raise ConvertError(f"{name}: not a CLEVRER name (expected video_NNNNN)")
    video_id = int(match[1])
    for split, (first, last) in cfg.clevrer_ranges.items():
        if first <= video_id <= last:
            return split
    return None


def assign_splits(raw: Path, cfg: ConvertConfig) -> list[Source]:
    """Every raw video with its split under ``cfg.source``; videos of no split are left out."""
    sources = []
    for path in find_raw_videos(raw):
        name = video_name(path)
        if cfg.source == "kth":
            split = kth_split(name, cfg)
        elif cfg.source == "clevrer":
            split = clevrer_split(name, cfg)
        else:
            relative = path.relative_to(raw).parts
            split = relative[0] if len(relative) > 1 else None
        if split is not None:
            sources.append(Source(path, name, split))
    if not sources:
        raise ConvertError(f"{raw}: no video matched the '{cfg.source}' split rule")
    return sorted(sources, key=lambda s: (natural_key(s.name), natural_key(str(s.path))))  # video order = name order


def read_raw_video(path: Path) -> np.ndarray:
    """All frames of a video file or frame directory as ``uint8 [T, H, W, 3]`` RGB."""
    try:
        if path.is_dir():
            files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))
            frames = [_as_rgb(iio.imread(f)) for f in files]
        else:
            frames = [_as_rgb(frame) for frame in iio.imiter(path)]
    except Exception as exc:  # imageio raises many types; all mean "cannot decode this file"
        raise ConvertError(f"{path}: cannot decode: {exc}") from None
    if not frames:
        raise ConvertError(f"{path}: no frames")
    return np.stack(frames)


def _as_rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be 8-bit, got {frame.dtype}")
    if frame.ndim == 2:
        return np.repeat(frame[..., None], 3, axis=-1)
    return frame[..., :3] if frame.shape[-1] >= 3 else np.repeat(frame[..., :1], 3, axis=-1)


def resize_frames(frames: np.ndarray, size: int, aspect: str) -> np.ndarray:
    """Resize ``uint8 [T, H, W, 3]`` to ``[T, size, size, 3]`` under the ``squash`` or ``crop`` aspect rule."""
    _, height, width, _ = frames.shape
    if aspect == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        frames = frames[:, top : top + side, left : left + side]
    if frames.shape[1:3] == (size, size):
        return np.ascontiguousarray(frames)
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in frames])


def convert_videos(
    sources: list[Source], out_root: Path, image_size: int, cfg: ConvertConfig, progress: Callable = tqdm
) -> dict[str, int]:
    """Decode, resize and write every source into ``out_root/<split>/shard_NNNN.hdf5``; returns videos per split."""
    counts: dict[str, int] = {}
    by_split: dict[str, list[Source]] = {}
    for source in sources:
        by_split.setdefault(source.split, []).append(source)
    rule = cfg.source if cfg.source != "kth" else f"kth/{cfg.kth_split}"
    for split, items in by_split.items():
        if cfg.max_videos_per_split:
            items = items[: cfg.max_videos_per_split]
        attrs = {"split": split, "split_rule": rule, "aspect": cfg.aspect}
        with ShardWriter(out_root / split, attrs=attrs) as writer:
            for source in progress(items, desc=f"convert {split}", unit="video"):
                frames = read_raw_video(source.path)
                frames = resize_frames(frames[: cfg.max_frames] if cfg.max_frames else frames, image_size, cfg.aspect)
                writer.add(frames, source=source.name)
        counts[split] = len(items)
    return counts

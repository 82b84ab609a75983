"""HDF5 video shards in the RIVER / reference layout (docs/METHOD.md §1.2–1.3), read and written safely.

``<root>/<split>/shard_0001.hdf5``, ... (videos numbered globally in file order); in each file a group ``len`` of
scalar int64 frame counts named by in-shard index ``"0"``, ``"1"``, ..., an empty group ``videos``, and per video a
group (same name) of frames ``"0"``, ``"1"``, ...: uint8 (H, W, 3) RGB, lzf. Provenance the reference ignores: file
attributes (``split``, ``split_rule``, ``writer``) and a ``source`` attribute per video.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SHARD_NAME = "shard_{:04d}.hdf5"
SHARD_GLOBS = ("*.hdf5", "*.h5")
DEFAULT_VIDEOS_PER_SHARD = 100_000  # the reference's default: normally one shard per split
WRITER_TAG = "latent-interpolants/shards-v1"


class ShardError(RuntimeError):
    """A shard is missing, unreadable or malformed; the message names the file and the problem."""


class ShardWriter:
    """Append videos to ``<split_dir>/shard_NNNN.hdf5``; a context manager. Shards are written under a temporary
    name and renamed when complete; on an exception the unfinished one is deleted."""

    def __init__(self, split_dir: str | Path, videos_per_shard: int = DEFAULT_VIDEOS_PER_SHARD, attrs: dict[str, Any] | None = None):
        if videos_per_shard < 1:
            raise ValueError("videos_per_shard must be >= 1")
        self.split_dir = Path(split_dir)
        self.videos_per_shard = videos_per_shard
        self.attrs = dict(attrs or {})
        self.written: list[Path] = []
        self._file: h5py.File | None = None
        self._tmp: Path | None = None
        self._count_in_shard = 0

    def add(self, frames: np.ndarray, source: str = "") -> None:
        """Append one video, ``uint8 [T, H, W, 3]``; ``source`` names where it came from (provenance)."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
            raise ValueError(f"video {source!r}: expected uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
        if self._file is None:
            self._open_next()
        key = str(self._count_in_shard)
        group = self._file.create_group(key)
        group.attrs["source"] = source
        for index, frame in enumerate(frames):
            group.create_dataset(str(index), data=frame, compression="lzf")
        self._file["len"].create_dataset(key, data=int(frames.shape[0]))  # int64 scalar, as the reference
        self._count_in_shard += 1
        if self._count_in_shard == self.videos_per_shard:
            self._finalise()

    def _open_next(self) -> None:
        self.split_dir.mkdir(parents=True, exist_ok=True)
        final = self.split_dir / SHARD_NAME.format(len(self.written) + 1)
        self._tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        self._file = h5py.File(self._tmp, "w")
        self._file.create_group("len")
        self._file.create_group("videos")  # present and empty in the reference layout
        self._file.attrs["writer"] = WRITER_TAG
        for name, value in self.attrs.items():
            self._file.attrs[name] = value
        self._count_in_shard = 0

    def _finalise(self) -> None:
        assert self._file is not None and self._tmp is not None
        self._file.flush()
        self._file.close()
        final = self._tmp.with_name(self._tmp.name.split(".tmp-")[0])
        with open(self._tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self._tmp, final)
        self.written.append(final)
        self._file, self._tmp = None, None

    def abort(self) -> None:
        """Delete the unfinished shard (already finalised shards stay)."""
        if self._file is not None:
            self._file.close()
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._file, self._tmp = None, None

    def close(self) -> list[Path]:
        """Finalise the current shard; return every shard written."""
        if self._file is not None:
            self._finalise()
        return self.written

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class VideoEntry:
    """Where one video lives: its shard file, in-shard key, frame count and source name ('' if unknown)."""

    shard: Path
    key: str
    length: int
    source: str


def find_shards(path: str | Path) -> list[Path]:
    """The shard files of a split: ``path`` itself if it is a file, else its ``*.hdf5``/``*.h5`` sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ShardError(f"{path}: no such split directory or shard file")
    return sorted({p for pattern in SHARD_GLOBS for p in path.glob(pattern)}, key=lambda p: p.name)


def natural_key(text: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically (``img2`` < ``img10``)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


class ShardReader:
    """Random access to the videos of one split, indexed globally across its shards.

    The index is read at construction with every file closed again; HDF5 handles open lazily per process, so the
    reader pickles and suits DataLoader workers (fork or spawn). Problems raise ShardError naming file and video.
    """

    def __init__(self, path: str | Path, image_size: int | None = None, validate: bool = True):
        self.path = Path(path)
        self.image_size = image_size
        self.videos: list[VideoEntry] = []
        self.frame_shape: tuple[int, int, int] | None = None
        for shard in find_shards(self.path):
            self.videos.extend(self._index_shard(shard))
        if not self.videos:
            raise ShardError(f"{self.path}: empty split (no shard files or no videos in them)")
        self.lengths = np.array([v.length for v in self.videos], dtype=np.int64)
        self._handles: dict[Path, h5py.File] = {}
        self._pid = os.getpid()
        if validate:
            self.validate()

    def validate(self) -> None:
        """Check every video's frame datasets (names, dtype uint8, one (H, W, 3) shape) from metadata alone."""
        for shard in sorted({v.shard for v in self.videos}):
            with h5py.File(shard, "r") as fh:
                for entry in (v for v in self.videos if v.shard == shard):
                    self._check_video(shard, entry.key, fh[entry.key], entry.length)

    def _index_shard(self, shard: Path) -> list[VideoEntry]:
        try:
            fh = h5py.File(shard, "r")
        except OSError as exc:
            raise ShardError(f"{shard}: cannot open as HDF5 (truncated or corrupt file?): {exc}") from None
        with fh:
            if "len" not in fh:
                raise ShardError(f"{shard}: no 'len' group; not a video shard in the reference layout")
            keys = sorted(fh["len"].keys(), key=natural_key)
            if keys != [str(i) for i in range(len(keys))]:
                raise ShardError(f"{shard}: 'len' keys must be 0..{len(keys) - 1}, got {keys[:5]}...")
            entries = []
            for key in keys:
                length = _video_length(shard, key, fh["len"][key])
                if not isinstance(fh.get(key), h5py.Group):
                    raise ShardError(f"{shard}: video '{key}' is listed in 'len' but has no group of frames")
                entries.append(VideoEntry(shard, key, length, str(fh[key].attrs.get("source", ""))))
            return entries

    def _check_video(self, shard: Path, key: str, group: h5py.Group, length: int) -> None:
        if length < 1:
            raise ShardError(f"{shard}: video '{key}' has length {length}")
        for index in range(length):
            name = str(index)
            if name not in group:
                raise ShardError(f"{shard}: video '{key}' is missing frame '{name}' (len says {length} frames)")
            ds = group[name]
            if not isinstance(ds, h5py.Dataset):
                raise ShardError(f"{shard}: video '{key}' frame '{name}' is a {type(ds).__name__}, not an array")
            if ds.dtype != np.uint8:
                raise ShardError(f"{shard}: video '{key}' frame '{name}' has dtype {ds.dtype}, expected uint8")
            if self.frame_shape is None:
                self.frame_shape = tuple(ds.shape)
                self._check_frame_shape(shard, key, name)
            elif tuple(ds.shape) != self.frame_shape:
                raise ShardError(
                    f"{shard}: video '{key}' frame '{name}' has shape {ds.shape}, expected {self.frame_shape} like the rest"
                )

    def _check_frame_shape(self, shard: Path, key: str, name: str) -> None:
        shape = self.frame_shape
        expected = (self.image_size, self.image_size, 3) if self.image_size else None
        if len(shape) != 3 or shape[2] != 3 or (expected and shape != expected):
            want = expected or "(H, W, 3)"
            raise ShardError(f"{shard}: video '{key}' frame '{name}' has shape {shape}, expected {want}")

    def __len__(self) -> int:
        return len(self.videos)

    def _file(self, shard: Path) -> h5py.File:
        if os.getpid() != self._pid:  # forked worker: never reuse the parent's HDF5 handles
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(shard)
        if handle is None:
            try:
                handle = self._handles[shard] = h5py.File(shard, "r")
            except OSError as exc:
                raise ShardError(f"{shard}: cannot open as HDF5: {exc}") from None
        return handle

    def read_frames(self, video: int, indices: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Frames of video ``video`` (all, or the given frame indices) as ``uint8 [n, H, W, 3]``."""
        entry = self.videos[video]
        wanted = range(entry.length) if indices is None else [int(i) for i in indices]
        group = self._file(entry.shard)[entry.key]
        frames = []
        for index in wanted:
            if not 0 <= index < entry.length:
                raise IndexError(f"{entry.shard}: video '{entry.key}' has {entry.length} frames, asked for {index}")
            try:
                frames.append(group[str(index)][()])
            except (OSError, KeyError) as exc:
                raise ShardError(f"{entry.shard}: cannot read video '{entry.key}' frame {index}: {exc}") from None
        return np.stack(frames)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # h5py handles do not pickle; each process opens its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()


def _video_length(shard: Path, key: str, node) -> int:
    """A video's frame count from its ``len`` entry, which must be a scalar integer dataset (the reference's int64)."""
    if not isinstance(node, h5py.Dataset) or node.shape != () or node.dtype.kind not in "iu":
        kind = type(node).__name__ if not isinstance(node, h5py.Dataset) else f"{node.dtype} array of shape {node.shape}"
        raise ShardError(f"{shard}: 'len/{key}' must be a scalar integer, got a {kind}")
    return int(node[()])


def split_dirs(root: str | Path, splits: list[str]) -> dict[str, Path]:
    """``{split: <root>/<split>}``; ShardError naming any missing split (never skipped: it would fail later)."""
    root = Path(root)
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise ShardError(f"{root}: no split directory {', '.join(missing)} (the settings produce {', '.join(splits)}): "
                         "run `make data`, or point DATA_DIR at the shards")
    return {s: root / s for s in splits}

"""The Zarr v3 latent store written by stage 1 and read by every later stage (plain ``zarr`` reads it)::

    latents.zarr/   attrs: fingerprint, inputs, views, latent_shape, dtype, chunk_frames, stats {split: {mean, std}}
                           (per channel, view 0), config, code_version, complete
      <split>/latents   [views, frames, C, h, w]  float32 | float16, chunks (1, chunk_frames, C, h, w)
      <split>/offsets   [videos] int64   first frame of each video (chunk-aligned: videos never share a chunk)
      <split>/lengths   [videos] int64   frames of each video
      <split>/done      [videos] bool    set after the video's latents are written (one chunk per flag)
      <split>/chunk_crc [videos, views * chunks of the longest video] uint32  the CRC32C each of the video's chunks
                        was written with (view-major; one chunk per video, written before its done flag)
      <split> attrs: videos = [{shard, key, source, length}]

Writers of different videos never share a chunk, so distributed encoding needs no locks and a rerun redoes only
videos whose flag is unset. Every read is checked (:mod:`pipeline.data.checked_store`: CRC32C against the bytes and
against the place's ``chunk_crc`` entry, finite values); index arrays must be consistent; errors name store, array,
chunk and video. Float fill is NaN, so unread data never passes for zeros.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from pipeline.data.checked_store import (CRC_INDEX, DAMAGED, NonFiniteError, StoreReadError, check_chunk, checked_compressors,
                                         create_crc_index, decode_chunk, has_checked_codecs, has_node, open_node,
                                         open_store, read_array, stored_chunks)

FORMAT_VERSION = 3  # bump when the layout or the meaning of stored values changes (3: the chunk_crc index)


def store_url(out_root: str, dataset: str) -> str:
    """``<out>/<dataset>/latents.zarr`` (a local path or an fsspec URL such as ``s3://bucket/outputs``)."""
    return f"{str(out_root).rstrip('/')}/{dataset}/latents.zarr"


def create_split(root: zarr.Group, split: str, videos: list[dict[str, Any]], n_views: int,
                 latent_shape: tuple[int, int, int], dtype: str, chunk_frames: int, compression_level: int) -> None:
    """Create one split's arrays, sized for ``videos`` (each a provenance dict with its ``length``)."""
    lengths = np.array([v["length"] for v in videos], dtype=np.int64)
    padded = -(-lengths // chunk_frames) * chunk_frames  # every video starts on a chunk boundary
    offsets, total = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64), int(padded.sum())
    group = root.create_group(split)
    group.attrs["videos"] = videos
    codecs = {"compressors": checked_compressors(compression_level)}
    group.create_array(  # fill NaN: never mistaken for latents (padding frames after each video read as NaN too)
        "latents", shape=(n_views, total, *latent_shape), chunks=(1, chunk_frames, *latent_shape),
        dtype=dtype, fill_value=float("nan"), **codecs,
    )
    stored = {"write_empty_chunks": True}  # an all-zero index (one video at offset 0) is stored, not left absent
    group.create_array("offsets", data=offsets, chunks=(max(len(offsets), 1),), config=stored, **codecs)
    group.create_array("lengths", data=lengths, chunks=(max(len(lengths), 1),), config=stored, **codecs)
    group.create_array("done", shape=(len(videos),), chunks=(1,), dtype=bool, fill_value=False, **codecs)
    create_crc_index(group, len(videos), n_views * max(int(-(-lengths.max(initial=1) // chunk_frames)), 1),
                     compression_level)


def video_chunks(latents: zarr.Array, offset: int, length: int) -> list[tuple[zarr.Array, tuple[int, ...]]]:
    """The chunks of a video at ``offset`` of ``length`` frames in a split's latents, view-major: its index slots."""
    cf, tail = latents.chunks[1], (0,) * (latents.ndim - 2)
    first = offset // cf
    return [(latents, (v, c, *tail)) for v in range(latents.shape[0]) for c in range(first, first + -(-length // cf))]


class LatentSplit:
    """One split of the store: per-video latents and batched frame reads, every read checked.

    ``read_frames`` decodes each needed chunk once itself (CRC32C against the bytes and against ``chunk_crc``, Blosc):
    zarr's generic indexing is several times slower for the scattered reads of triplet sampling.
    """

    def __init__(self, url: str, split: str):
        root = open_store(url)
        if root is None:
            raise FileNotFoundError(f"no latent store at {url} (run `make encode` first)")
        if not has_node(root, split):
            held = sorted(name for name in root.group_keys())
            raise FileNotFoundError(f"{url} holds no split '{split}' (it holds: {', '.join(held) or 'none'}): the "
                                    f"shards had no '{split}' directory when it was encoded, or data.splits left it out")
        self.url, self.split = url, split
        group = open_node(root, split, url)
        self.latents = open_node(group, "latents", url)
        if not has_node(group, CRC_INDEX):
            raise StoreReadError(f"{url}: split '{split}' has no '{CRC_INDEX}' index of its chunks' checksums: a store "
                                 f"of an older format; rebuild it (make encode FORCE=1)")
        # unwritten rows (videos not yet encoded) read as 0, which no chunk of theirs then matches
        self.crc = read_array(open_node(group, CRC_INDEX, url), slice(None), url, missing_ok=True)
        # absent offsets read as zeros (missing_ok), which _check_index refuses unless they are right
        self.offsets = read_array(open_node(group, "offsets", url), slice(None), url, missing_ok=True)
        self.lengths = read_array(open_node(group, "lengths", url), slice(None), url)
        self.done = read_array(open_node(group, "done", url), slice(None), url, missing_ok=True)
        self.videos = group.attrs["videos"]
        self.attrs = dict(root.attrs)
        self.n_views, self.latent_shape = self.latents.shape[0], tuple(self.latents.shape[2:])
        self.chunk_frames = self.latents.chunks[1]
        self._in_memory: np.ndarray | None = None
        if not has_checked_codecs(self.latents):
            raise StoreReadError(f"{url}: '{split}/latents' is not stored with the codecs this version writes and "
                                 f"checks (Blosc, then CRC32C): rebuild it (make encode FORCE=1)")
        _check_index(self)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.latents.shape)) * self.latents.dtype.itemsize

    def load_into_memory(self, chunks_per_read: int = 256) -> None:
        """Read the whole latents array once (checked like every read); later reads are plain numpy indexing."""
        if self._in_memory is not None:
            return
        cf, frames = self.chunk_frames, self.latents.shape[1]
        memory = np.empty(self.latents.shape, dtype=self.latents.dtype)
        keys = [(v, c) for v in range(self.n_views) for c in range(-(-frames // cf))]
        for i in range(0, len(keys), chunks_per_read):
            part = keys[i : i + chunks_per_read]
            for (v, c), chunk in zip(part, self._fetch_chunks(part)):
                memory[v, c * cf : (c + 1) * cf] = chunk[: frames - c * cf]
        for k in range(len(self)):
            start, length = int(self.offsets[k]), int(self.lengths[k])
            for v in range(self.n_views):
                block = memory[v, start : start + length]
                if not np.isfinite(block).all():
                    raise self._nonfinite(block, np.full(length, v), np.arange(start, start + length))
        self._in_memory = memory

    @property
    def in_memory(self) -> bool:
        return self._in_memory is not None

    def video(self, index: int, view: int = 0) -> np.ndarray:
        """All latents of one video ``[n, C, h, w]``."""
        start, length = int(self.offsets[index]), int(self.lengths[index])
        if self._in_memory is not None:
            return self._in_memory[view, start : start + length]
        return self.read_frames(np.full(length, view), np.arange(start, start + length))

    def read_frames(self, views: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Latents at (view, global frame) pairs: ``[len(frames), C, h, w]`` as stored (float32/float16)."""
        views, frames = np.asarray(views, dtype=np.int64), np.asarray(frames, dtype=np.int64)
        if self._in_memory is not None:  # checked when loaded
            return self._in_memory[views, frames]
        chunk_ids = views * (self.latents.shape[1] // self.chunk_frames + 1) + frames // self.chunk_frames
        _, first, inverse = np.unique(chunk_ids, return_index=True, return_inverse=True)
        keys = [(int(views[i]), int(frames[i] // self.chunk_frames)) for i in first]
        out = np.empty((len(frames), *self.latent_shape), dtype=self.latents.dtype)
        rows_of = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])  # per chunk
        for rows, chunk in zip(rows_of, self._fetch_chunks(keys)):
            out[rows] = chunk[frames[rows] % self.chunk_frames]
        if not np.isfinite(out).all():
            raise self._nonfinite(out, views, frames)
        return out

    def _fetch_chunks(self, keys: list[tuple[int, int]]) -> list[np.ndarray]:
        """Decoded chunks ``[chunk_frames, C, h, w]`` for (view, chunk index) keys; missing, corrupt ones and ones
        other than recorded in ``chunk_crc`` for their place raise."""
        cf, tail = self.chunk_frames, [0] * len(self.latent_shape)
        views, chunks = (np.array([key[i] for key in keys], dtype=np.int64).reshape(-1) for i in (0, 1))
        video = np.searchsorted(self.offsets, chunks * cf, side="right") - 1
        slots = views * (self.crc.shape[1] // self.n_views) + chunks - self.offsets[video] // cf
        coords = [(v, c, *tail) for v, c in keys]
        blobs = stored_chunks(self.latents, coords)
        out = []
        for blob, coord, k, slot in zip(blobs, coords, video, slots):
            recorded = int(self.crc[k, slot]) if k >= 0 and 0 <= slot < self.crc.shape[1] else -1
            data = check_chunk(self.latents, self.url, coord, blob, recorded, self._describe(*coord[:2]))
            out.append(decode_chunk(self.latents, self.url, coord, data, self._describe(*coord[:2]))[0])
        return out

    def _video_of(self, frame: int) -> int:
        return int(np.searchsorted(self.offsets, frame, side="right")) - 1

    def _describe(self, view: int, chunk: int) -> str:
        """What a chunk holds: the view, its frames and the video they belong to."""
        first = chunk * self.chunk_frames
        k = self._video_of(first)
        return (f"view {view}, frames {first}-{first + self.chunk_frames - 1}: video {k} "
                f"({self.videos[k].get('source', '?')}) of split '{self.split}'") if 0 <= k < len(self) else f"view {view}"

    def _nonfinite(self, values: np.ndarray, views: np.ndarray, frames: np.ndarray) -> NonFiniteError:
        """The error for latents read at (views, frames) that hold NaN/Inf: the first such frame's video, and how many."""
        bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
        frame, k = int(frames[bad[0]]), self._video_of(int(frames[bad[0]]))
        more = f" (and {len(bad) - 1} more of the {len(values)} frames read)" if len(bad) > 1 else ""
        return NonFiniteError(f"{self.url}: split '{self.split}' holds non-finite latents (NaN/Inf) in video {k} "
                             f"({self.videos[k].get('source', '?')}), view {int(views[bad[0]])}, frame "
                             f"{frame - int(self.offsets[k])}{more}; {DAMAGED}")


def _check_index(split: LatentSplit) -> None:
    """The index arrays must agree with each other, the recorded videos and the latents array; else StoreReadError."""
    offsets, lengths, cf, frames = split.offsets, split.lengths, split.chunk_frames, split.latents.shape[1]
    sizes = {"offsets": offsets.shape, "lengths": lengths.shape, "done": split.done.shape, "videos": (len(split.videos),)}
    problems = []
    if len(set(sizes.values())) > 1:
        problems.append("offsets, lengths, done and the videos attribute differ in length ("
                        + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ")")
    else:
        recorded = np.array([v.get("length", -1) for v in split.videos], dtype=np.int64)
        ends = offsets + -(-lengths // cf) * cf
        checks = [
            (lengths < 0, lambda k: f"video {k} has a negative length {lengths[k]}"),
            (lengths != recorded, lambda k: f"video {k} has length {lengths[k]} but was recorded with {recorded[k]}"),
            (offsets % cf != 0, lambda k: f"video {k} starts at frame {offsets[k]}, not on a chunk boundary ({cf} frames)"),
            (offsets < 0, lambda k: f"video {k} starts at a negative frame {offsets[k]}"),
            (np.r_[False, offsets[1:] < ends[:-1]], lambda k: f"video {k} starts at frame {offsets[k]}, inside video "
                                                             f"{k - 1} (frames {offsets[k - 1]}..{ends[k - 1] - 1})"),
            (offsets + lengths > frames, lambda k: f"video {k} ends at frame {offsets[k] + lengths[k]}, past the "
                                                   f"latents array's {frames} frames"),
        ]
        problems = [describe(int(np.flatnonzero(bad)[0])) for bad, describe in checks if bad.any()]
    if problems:
        raise StoreReadError(f"{split.url}: the index arrays of split '{split.split}' are inconsistent: "
                             f"{'; '.join(problems)}; {DAMAGED}")

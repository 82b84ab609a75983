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
videos whose flag is unset. Integrity (this store and ``forecasts.zarr``): every chunk is stored and CRC32C-checked
(:func:`checked_compressors`), and as the checksum covers bytes, not the key, a ``chunk_crc`` index records each
chunk's CRC32C by place when it is written: a chunk swapped, moved or altered (checksum updated) is refused. Float
values read must be finite, index arrays consistent; errors name store, array, chunk and video. Float fill is NaN,
so unread data never passes for zeros.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, BytesCodec, Crc32cCodec
from zarr.storage import LocalStore

FORMAT_VERSION = 3  # bump when the layout or the meaning of stored values changes (3: the chunk_crc index)
DAMAGED = "the store is damaged: delete it and rerun the stage that writes it"
CRC_INDEX = "chunk_crc"  # per row (video) of a store: the CRC32C each of its chunks was written with


class DataIntegrityError(RuntimeError):
    """Data cannot be trusted: stored bytes are missing, corrupt or inconsistent, or values are NaN/Inf."""


class StoreReadError(DataIntegrityError):
    """A store's metadata, chunk or index arrays cannot be read as written; the message names store, array, chunk."""


class NonFiniteError(DataIntegrityError):
    """NaN or Inf where finite values are required; the message names the data (store, video, set)."""


class ForeignStoreError(DataIntegrityError):
    """A store holds data other than the config describes (another dataset, views or storage); the message says
    which config made it."""


class StoreWriteError(OSError):
    """Writing a store failed (disk full, read-only, ...); the message names the store, array and chunk file."""


def require_finite(values: Any, what: str, hint: str = "") -> None:
    """Raise :class:`NonFiniteError` naming ``what`` unless every value (numpy array or torch tensor) is finite."""
    values = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    if np.isfinite(values).all():
        return
    bad = int(values.size - np.isfinite(values).sum())
    raise NonFiniteError(f"{what}: {bad} of {values.size} values are NaN/Inf" + (f"; {hint}" if hint else ""))


def store_url(out_root: str, dataset: str) -> str:
    """``<out>/<dataset>/latents.zarr`` (a local path or an fsspec URL such as ``s3://bucket/outputs``)."""
    return f"{str(out_root).rstrip('/')}/{dataset}/latents.zarr"


def open_store(url: str, mode: str = "r") -> zarr.Group | None:
    """The store's root group, or None when there is no store at ``url``; unreadable metadata is a StoreReadError."""
    try:
        return zarr.open_group(url, mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None
    except Exception as exc:
        raise _metadata_error(url, "zarr.json", exc) from exc


def store_attrs(url: str) -> dict[str, Any]:
    """The attributes of the zarr store at ``url`` ({} when there is none)."""
    root = open_store(url)
    return dict(root.attrs) if root is not None else {}


def open_node(group: zarr.Group, name: str, url: str) -> zarr.Array | zarr.Group:
    """Member ``name`` of ``group``: KeyError when it does not exist, StoreReadError when its zarr.json is unreadable."""
    key = f"{group.path}/{name}/zarr.json".lstrip("/")
    try:
        return group[name]
    except Exception as exc:
        if isinstance(exc, KeyError) and not _exists(group.store, [key])[0]:
            raise KeyError(f"{url} holds no '{key[: -len('/zarr.json')]}'") from None
        raise _metadata_error(url, key, exc) from exc


def has_node(group: zarr.Group, name: str) -> bool:
    """Whether ``group`` has a member ``name`` (its metadata file exists; it is not parsed)."""
    return _exists(group.store, [f"{group.path}/{name}/zarr.json".lstrip("/")])[0]


def read_array(array: zarr.Array, selection: Any, url: str, what: str = "", missing_ok: bool = False,
               finite: bool = True) -> np.ndarray:
    """``array[selection]`` (ints and unit-step slices) from chunks that exist and decode; ``what`` names it in errors.
    ``missing_ok``: absent chunks mean the fill value by design (an unwritten ``done`` flag is False). Float values
    must be finite (NonFiniteError) unless ``finite`` is False (a read that includes NaN padding by design)."""
    coords = _selected_chunks(array, selection)
    if not missing_ok:
        missing = [c for c, there in zip(coords, _exists(array.store, _chunk_keys(array, coords))) if not there]
        if missing:
            more = f" (and {len(missing) - 1} more of the {len(coords)} chunks it needs)" if len(missing) > 1 else ""
            raise _chunk_error(array, url, missing[0], f"is missing{more}: never written or deleted", what)
    try:
        values = array[selection]
    except Exception as exc:
        raise _undecodable(array, url, coords, exc, what) from exc
    if finite and np.issubdtype(array.dtype, np.floating):
        require_finite(values, f"{url}: array '{array.path}'" + (f", {what}" if what else ""), DAMAGED)
    return values


def write_array(array: zarr.Array, selection: Any, values: Any) -> None:
    """``array[selection] = values``, storing every chunk even when it equals the fill value (so none is ever absent);
    a failed write (disk full, read-only) is a StoreWriteError naming the store, array and first chunk file."""
    try:
        array.with_config({"write_empty_chunks": True})[selection] = values
    except OSError as exc:
        key = _chunk_keys(array, _selected_chunks(array, selection)[:1])[0]
        where = f"{_location(array.store)}/{key}"
        raise StoreWriteError(f"{_location(array.store)}: writing array '{array.path}' failed at chunk file {where} "
                              f"({exc.strerror or _reason(exc)})") from exc


def record_crcs(index: zarr.Array, row: int, chunks: list[tuple[zarr.Array, tuple[int, ...]]]) -> None:
    """Record in ``index[row]`` the CRC32C each of ``chunks`` (array, chunk coordinate) was just stored with, in
    order: what later reads of that place must find (:func:`check_chunk`)."""
    crcs = []
    for array, coord in chunks:
        blob = _stored(array.store, _chunk_keys(array, [coord]))[0]
        if blob is None or len(blob) < 4:
            raise StoreWriteError(f"{_location(array.store)}: chunk {_chunk_keys(array, [coord])[0]} was not stored")
        crcs.append(int.from_bytes(blob[-4:], "little"))
    values = np.zeros(index.shape[1], dtype=np.uint32)
    values[: len(crcs)] = crcs
    write_array(index, row, values)


def check_chunk(array: zarr.Array, url: str, coord: tuple[int, ...], blob: bytes | None, recorded: int,
                what: str = "") -> bytes:
    """The stored bytes of one chunk without their CRC32C, after checking that they are present, match their CRC32C
    and that the CRC32C is the one recorded for this place when it was written (else a StoreReadError naming it)."""
    if blob is None:
        raise _chunk_error(array, url, coord, "is missing: never written or deleted", what)
    data, crc = blob[:-4], int.from_bytes(blob[-4:], "little")
    if len(blob) < 4 or google_crc32c.value(data) != crc:  # zarr's crc32c codec: 4 bytes little-endian, after them
        raise _chunk_error(array, url, coord, "cannot be decoded (its CRC32C checksum does not match its bytes)", what)
    if crc != recorded:
        raise _chunk_error(array, url, coord, f"is not the chunk written there: its CRC32C {crc:08x} differs from the "
                           f"{recorded:08x} recorded in '{CRC_INDEX}' when it was written (swapped, moved or altered)",
                           what)
    return data


def row_chunks(arrays: list[zarr.Array], row: int) -> list[tuple[zarr.Array, tuple[int, ...]]]:
    """Every chunk of row ``row`` (a chunk of its own along axis 0) of each array, in order: a row's index slots."""
    chunks = []
    for array in arrays:
        grid = [-(-size // chunk) for size, chunk in zip(array.shape[1:], array.chunks[1:])]
        chunks += [(array, (row, *rest)) for rest in itertools.product(*map(range, grid))]
    return chunks


def verify_rows(group: zarr.Group, names: list[str], rows: Any, url: str) -> None:
    """Check every stored byte of ``rows`` of the arrays ``names`` (each chunked one row along axis 0) against the
    group's ``chunk_crc`` index, without decoding: a missing, altered or swapped chunk is a StoreReadError."""
    arrays = [open_node(group, name, url) for name in names]
    index = open_node(group, CRC_INDEX, url)
    for row in np.atleast_1d(rows):
        recorded = read_array(index, int(row), url, f"video row {row}")
        chunks = row_chunks(arrays, int(row))
        for (array, coord), want in zip(chunks, recorded):
            check_chunk(array, url, coord, _stored(array.store, _chunk_keys(array, [coord]))[0], int(want),
                        f"video row {row}")


def delete_store(url: str) -> None:
    """Remove a whole store: a local directory, or everything under an fsspec URL."""
    if "://" in url:
        fs, path = _url_fs(url)
        fs.rm(path, recursive=True)
    else:
        shutil.rmtree(url)


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


def create_crc_index(group: zarr.Group, rows: int, slots: int, level: int) -> zarr.Array:
    """The group's ``chunk_crc`` index: per row, the CRC32C of each of its chunks (one index chunk per row, so the
    writers of different rows never share one)."""
    return group.create_array(CRC_INDEX, shape=(rows, slots), chunks=(1, slots), dtype="uint32", fill_value=0,
                              compressors=checked_compressors(level))


def video_chunks(latents: zarr.Array, offset: int, length: int) -> list[tuple[zarr.Array, tuple[int, ...]]]:
    """The chunks of a video at ``offset`` of ``length`` frames in a split's latents, view-major: its index slots."""
    cf, tail = latents.chunks[1], (0,) * (latents.ndim - 2)
    first = offset // cf
    return [(latents, (v, c, *tail)) for v in range(latents.shape[0]) for c in range(first, first + -(-length // cf))]


def checked_compressors(level: int) -> list[Any]:
    """The bytes codecs of every array we write: Blosc/zstd, then the CRC32C checksum that refuses changed chunks."""
    return [BloscCodec(cname="zstd", clevel=level, shuffle=BloscShuffle.bitshuffle), Crc32cCodec()]


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
        if not _checked_blosc(self.latents):
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
        blobs = _stored(self.latents.store, _chunk_keys(self.latents, coords))
        out = []
        for blob, coord, k, slot in zip(blobs, coords, video, slots):
            recorded = int(self.crc[k, slot]) if k >= 0 and 0 <= slot < self.crc.shape[1] else -1
            data = check_chunk(self.latents, self.url, coord, blob, recorded, self._describe(*coord[:2]))
            out.append(self._decode(data, coord))
        return out

    def _decode(self, data: bytes, coord: tuple[int, ...]) -> np.ndarray:
        """One checked chunk's Blosc bytes as ``[chunk_frames, C, h, w]``; undecodable: an error."""
        try:
            return np.frombuffer(_BLOSC.decode(data), self.latents.dtype).reshape(self.chunk_frames, *self.latent_shape)
        except Exception as exc:
            raise _chunk_error(self.latents, self.url, coord, f"cannot be decoded ({_reason(exc)})",
                               self._describe(*coord[:2])) from None

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


def _selected_chunks(array: zarr.Array, selection: Any) -> list[tuple[int, ...]]:
    """Coordinates of the chunks that ``array[selection]`` reads (ints and unit-step slices, leading axes first)."""
    selection = selection if isinstance(selection, tuple) else (selection,)
    ranges = []
    for dim, (size, chunk) in enumerate(zip(array.shape, array.metadata.chunk_grid.chunk_shape)):
        part = selection[dim] if dim < len(selection) else slice(None)
        if isinstance(part, slice):
            start, stop, step = part.indices(size)
            if step != 1:
                raise ValueError(f"read_array: unsupported slice step {step}")
            ranges.append(range(start // chunk, -(-stop // chunk)) if stop > start else range(0))
        else:
            index = int(part) + size if int(part) < 0 else int(part)
            ranges.append(range(index // chunk, index // chunk + 1))
    return list(itertools.product(*ranges))


def _chunk_keys(array: zarr.Array, coords: list[tuple[int, ...]]) -> list[str]:
    """Store keys (from the store's root) of the chunks at ``coords``, as zarr v3's chunk key encoding names them."""
    return [f"{array.path}/{array.metadata.encode_chunk_key(c)}".lstrip("/") for c in coords]


def _stored(store: Any, keys: list[str]) -> list[bytes | None]:
    """The stored bytes of each key (None where absent): files of a local store, else fsspec's concurrent ``cat``."""
    if isinstance(store, LocalStore):
        return [_read(Path(store.root) / key) for key in keys]
    fs, root = _url_fs(store.fs.unstrip_protocol(store.path))
    found = fs.cat([f"{root}/{key}" for key in keys], on_error="omit")
    return [found.get(f"{root}/{key}") for key in keys]


def _exists(store: Any, keys: list[str]) -> list[bool]:
    """Whether each key is stored, without reading it."""
    if isinstance(store, LocalStore):
        return [(Path(store.root) / key).is_file() for key in keys]
    fs, root = _url_fs(store.fs.unstrip_protocol(store.path))
    return [fs.exists(f"{root}/{key}") for key in keys]


def _location(store: Any) -> str:
    """Where a zarr store lives: a local directory or an fsspec URL."""
    return str(store.root) if isinstance(store, LocalStore) else store.fs.unstrip_protocol(store.path)


def _url_fs(url: str) -> tuple[Any, str]:
    """A synchronous fsspec filesystem and path for a remote ``url`` (zarr's own fsspec store is asynchronous)."""
    import fsspec  # needed for remote stores only
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as fh:  # plain open: Path.read_bytes adds measurable time per chunk
            return fh.read()
    except FileNotFoundError:
        return None


def _chunk_error(array: zarr.Array, url: str, coord: tuple[int, ...], problem: str, what: str = "") -> StoreReadError:
    """The error for one bad chunk: store, array, chunk key and file, what it holds, and what to do."""
    key = _chunk_keys(array, [coord])[0]
    holds = f"; it holds {what}" if what else ""
    return StoreReadError(f"{url}: chunk {key[len(array.path) + 1:]} of array '{array.path}' ({url.rstrip('/')}/{key}) "
                          f"{problem}{holds}; {DAMAGED}")


def _undecodable(array: zarr.Array, url: str, coords: list[tuple[int, ...]], exc: Exception, what: str) -> StoreReadError:
    """Find which of ``coords`` fails to decode (a whole-selection read failed) and name it."""
    for coord in coords:
        try:
            array.get_block_selection(coord)
        except Exception as inner:
            return _chunk_error(array, url, coord, f"cannot be decoded ({_reason(inner)})", what)
    return StoreReadError(f"{url}: reading array '{array.path}' failed ({_reason(exc)})"
                          + (f" for {what}" if what else ""))


def _metadata_error(url: str, key: str, exc: Exception) -> StoreReadError:
    return StoreReadError(f"{url}: unreadable metadata file {url.rstrip('/')}/{key} ({_reason(exc)}); {DAMAGED}")


def _reason(exc: Exception) -> str:  # an error's type and first line, for one-line messages
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def _checked_blosc(array: zarr.Array) -> bool:
    """Whether the array's codecs are exactly those :func:`checked_compressors` writes (``_decode`` decodes them)."""
    codecs = array.metadata.codecs
    if [type(c) for c in codecs] != [BytesCodec, BloscCodec, Crc32cCodec]:
        return False
    return getattr(codecs[0].endian, "value", "little") == "little"


_BLOSC = numcodecs.Blosc()

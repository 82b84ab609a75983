"""Checked Zarr v3 stores: every stored array is written and read through here, so that what a stage reads is what
was written. Every chunk is stored (never left to the fill value) with Blosc then a CRC32C checksum
(:func:`checked_compressors`); as the checksum covers bytes, not the key, a ``chunk_crc`` index records each chunk's
CRC32C by place when it is written (:func:`record_crcs`), and every read compares both (:func:`check_chunk`): a chunk
missing, damaged, swapped, moved or altered with its checksum updated is refused. Float values read must be finite.
Errors are one line naming store, array, chunk key and file, and what the chunk holds. Used by the latent cache
(:mod:`pipeline.data.cache`) and ``forecasts.zarr`` (:mod:`pipeline.stages.forecast`).
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


def create_crc_index(group: zarr.Group, rows: int, slots: int, level: int) -> zarr.Array:
    """The group's ``chunk_crc`` index: per row, the CRC32C of each of its chunks (one index chunk per row, so the
    writers of different rows never share one)."""
    return group.create_array(CRC_INDEX, shape=(rows, slots), chunks=(1, slots), dtype="uint32", fill_value=0,
                              compressors=checked_compressors(level))


def checked_compressors(level: int) -> list[Any]:
    """The bytes codecs of every array we write: Blosc/zstd, then the CRC32C checksum that refuses changed chunks."""
    return [BloscCodec(cname="zstd", clevel=level, shuffle=BloscShuffle.bitshuffle), Crc32cCodec()]


def stored_chunks(array: zarr.Array, coords: list[tuple[int, ...]]) -> list[bytes | None]:
    """The stored bytes of the chunks of ``array`` at ``coords`` (None where absent), read concurrently, undecoded."""
    return _stored(array.store, _chunk_keys(array, coords))


def decode_chunk(array: zarr.Array, url: str, coord: tuple[int, ...], data: bytes, what: str = "") -> np.ndarray:
    """One chunk's Blosc bytes, checked by :func:`check_chunk`, as an array of the chunk's shape; else an error
    naming it (for arrays with :func:`has_checked_codecs`)."""
    try:
        return np.frombuffer(_BLOSC.decode(data), array.dtype).reshape(array.chunks)
    except Exception as exc:
        raise _chunk_error(array, url, coord, f"cannot be decoded ({_reason(exc)})", what) from None


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


def has_checked_codecs(array: zarr.Array) -> bool:
    """Whether the array's codecs are exactly those :func:`checked_compressors` writes (:func:`decode_chunk` decodes them)."""
    codecs = array.metadata.codecs
    if [type(c) for c in codecs] != [BytesCodec, BloscCodec, Crc32cCodec]:
        return False
    return getattr(codecs[0].endian, "value", "little") == "little"


_BLOSC = numcodecs.Blosc()

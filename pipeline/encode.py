"""Stage 1: run the frozen VQVAE once over every shard and write the latent store (``latents.zarr``).

Contract: reads ``<data.root>/<split>/*.hdf5`` and the VQVAE checkpoint; writes the store described in
``pipeline/cache.py``. The store's fingerprint covers everything the latents depend on (VQVAE architecture and
checkpoint checksum, shard checksums, pixel transform, views, storage layout, format version). A rerun with the
same fingerprint is "up to date" (or resumes an unfinished store); a different fingerprint is refused, naming what
changed, unless ``force`` rebuilds — old and new latents are never mixed.

Resumable: each video's latents are written before its ``done`` flag, so a killed run redoes only unflagged
videos. Encoding is batched per video (frames [0:B], [B:2B], ...), so a video's latents do not depend on which
other videos are encoded, by which rank, or in which run: a resumed or distributed store equals a one-shot one.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from pipeline.cache import FORMAT_VERSION, LatentSplit, create_split, delete_store, open_store, require_finite, write_array
from pipeline.config import Config, VQVAEConfig
from pipeline.data.clips import to_model_range
from pipeline.data.shards import ShardReader, split_dirs
from pipeline.dist import DistInfo, barrier, broadcast_object, init_distributed
from pipeline.records import cached_sha256, changed_keys, code_version, fingerprint
from pipeline.views import View, apply_view, make_views

PIXEL_TRANSFORM = "uint8 HWC -> float32 CHW, x / 127.5 - 1, no resize (shards hold image_size frames)"


class EncodeError(RuntimeError):
    """Stage 1 cannot proceed (bad input, missing checkpoint, ...); the message says why."""


class StaleCacheError(EncodeError):
    """The existing store was built from different inputs; the message names them."""


def encoded_splits(cfg: Config) -> list[str]:
    """The splits of ``data.splits`` that the data settings produce (a KTH config without validation persons
    lists 'val' but has none), in ``data.splits`` order; each must exist in the shard root."""
    produced, _ = cfg.produced_splits()
    return [s for s in cfg.data.splits if s in produced]


def vqvae_identity(cfg: VQVAEConfig, ckpt_sha256: str) -> dict[str, Any]:
    """What of the VQVAE determines the latents: architecture, sizes (taming) and the checkpoint's content."""
    identity: dict[str, Any] = {"arch": cfg.arch, "ckpt_sha256": ckpt_sha256}
    if cfg.arch == "taming":
        sizes = asdict(cfg)
        for key in ("arch", "ckpt", "batch_size", "dropout"):
            sizes.pop(key)
        identity.update(sizes)
    return identity


def cache_inputs(cfg: Config, readers: dict[str, ShardReader], views: list[View], hashes: dict[str, Any]) -> dict[str, Any]:
    """Everything the latents depend on, with file checksums (``hashes`` caches them by size and mtime)."""
    if not cfg.vqvae.ckpt or not Path(cfg.vqvae.ckpt).is_file():
        raise FileNotFoundError(f"VQVAE checkpoint not found: '{cfg.vqvae.ckpt}' (set vqvae.ckpt or VQVAE_CKPT=...)")
    shards = {}
    for split, reader in readers.items():
        for shard in sorted({v.shard for v in reader.videos}):
            shards[f"{split}/{shard.name}"] = cached_sha256(shard, hashes)
    return {
        "format": FORMAT_VERSION,
        "vqvae": vqvae_identity(cfg.vqvae, cached_sha256(cfg.vqvae.ckpt, hashes)),
        "shards": shards,
        "transform": {"image_size": cfg.data.image_size, "pixels": PIXEL_TRANSFORM},
        "views": {"seed": cfg.seed, "list": [v.describe() for v in views]},
        "storage": {"dtype": cfg.encode.dtype, "chunk_frames": cfg.encode.chunk_frames, "clevel": cfg.encode.compression_level},
    }


def encode_latents(cfg: Config, url: str, force: bool = False, dry_run: bool = False,
                   log: Callable[[str], None] = print) -> str:
    """Bring the store at ``url`` up to date with ``cfg``; returns 'up to date', 'encoded' or 'dry run'.

    Under torchrun every rank calls this; rank 0 decides and creates, all ranks encode disjoint videos.
    ``dry_run`` logs what would be done (up to date / resume / build / refuse) and changes nothing.
    """
    info = init_distributed()
    # The index alone (no per-frame validation) decides "up to date": unchanged shard checksums mean the shards
    # are the ones validated when the store was built. Validation runs only before encoding.
    readers = {s: ShardReader(d, image_size=cfg.data.image_size, validate=False)
               for s, d in split_dirs(cfg.data.root, encoded_splits(cfg)).items()}
    views = make_views(cfg.encode)
    decision = _decide(cfg, url, readers, views, force, dry_run, log) if info.is_main else None
    action, message = broadcast_object(decision)
    if action in ("stale", "error"):
        raise StaleCacheError(message) if action == "stale" else EncodeError(message)
    if action in ("up to date", "dry run"):
        return action
    barrier()
    _encode_my_videos(cfg, url, readers, views, info, log)
    barrier()
    if info.is_main:
        _finish(cfg, url, log)
    barrier()
    return "encoded"


def _decide(cfg, url, readers, views, force, dry_run, log) -> tuple[str, str]:
    """Rank 0: compare fingerprints; create the store when needed. Returns (action, message) for every rank."""
    try:
        root = open_store(url)
        old = dict(root.attrs) if root is not None else {}
        hashes = dict(old.get("file_hashes", {}))
        inputs = cache_inputs(cfg, readers, views, hashes)
        key = fingerprint(inputs)
        if root is not None and old.get("fingerprint") == key:
            if old.get("complete"):
                log(f"encode: {url} is up to date (fingerprint {key})")
                return "up to date", ""
            if dry_run:
                return _would(log, f"resume {url}")
            log(f"encode: resuming {url}")
            return "resume", ""
        changed = changed_keys(old.get("inputs", {}), inputs)
        detail = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
        detail += f" (VQVAE checkpoint {cfg.vqvae.ckpt})" if any(c.startswith("vqvae.") for c in changed) else ""
        stale = root is not None and "fingerprint" in old
        if dry_run:
            videos = sum(len(r.videos) for r in readers.values())
            return _would(log, f"refuse: {url} was built from different inputs; changed: {detail} (FORCE=1 rebuilds)"
                         if stale and not force else f"{'delete and re' if root is not None else ''}build {url} "
                         f"({videos} videos, {len(views)} view(s))")
        for reader in readers.values():
            reader.validate()
        if stale and not force:
            return "stale", (
                f"{url} was built from different inputs; changed: {detail}. "
                "Refusing to mix old and new latents: rerun with --force (make encode FORCE=1) to rebuild."
            )
        if root is not None:
            log(f"encode: --force: deleting {url} and rebuilding; changed: {detail}")
            delete_store(url)
        _create(cfg, url, readers, views, inputs, key, hashes)
        log(f"encode: created {url} (fingerprint {key}, {len(views)} view(s))")
        return "create", ""
    except Exception as exc:  # reported to every rank, so none waits forever at the broadcast
        return "error", f"{type(exc).__name__}: {exc}"


def _would(log, what: str) -> tuple[str, str]:
    """A dry run's verdict: logged, nothing done."""
    log(f"encode: dry run: would {what}")
    return "dry run", ""


def _create(cfg: Config, url, readers, views, inputs, key, hashes) -> None:
    import zarr  # local: only rank 0 creates

    root = zarr.open_group(url, mode="w")
    probe = _latent_shape(cfg)
    for split, reader in readers.items():
        videos = [{"shard": v.shard.name, "key": v.key, "source": v.source, "length": v.length} for v in reader.videos]
        create_split(root, split, videos, len(views), probe, cfg.encode.dtype, cfg.encode.chunk_frames, cfg.encode.compression_level)
    root.attrs.update({
        "fingerprint": key, "inputs": inputs, "file_hashes": hashes, "complete": False,
        "views": [v.name for v in views], "latent_shape": list(probe), "dtype": cfg.encode.dtype,
        "chunk_frames": cfg.encode.chunk_frames, "vqvae_ckpt": str(cfg.vqvae.ckpt),
        "config": cfg.to_dict(), "code_version": code_version(),
    })


def _latent_shape(cfg: Config) -> tuple[int, int, int]:
    from pipeline.vqvae import build_vqvae

    return build_vqvae(cfg.vqvae, cfg.data.image_size, load_weights=False).latent_shape()



def _encode_my_videos(cfg: Config, url: str, readers, views, info: DistInfo, log) -> None:
    """Encode this rank's share (every world_size-th unfinished video) of every split."""
    from pipeline.vqvae import build_vqvae

    root = open_store(url, mode="r+")
    todo = {}
    for split in readers:
        done = root[split]["done"][:]
        todo[split] = np.flatnonzero(~done)[info.rank :: info.world_size]
    frames_todo = len(views) * sum(int(readers[s].lengths[todo[s]].sum()) for s in todo)
    if frames_todo == 0:
        return
    vq = build_vqvae(cfg.vqvae, cfg.data.image_size).to(info.device)
    dtype = np.dtype(cfg.encode.dtype)
    bar = tqdm(total=frames_todo, unit="frame", desc=f"encode (rank {info.rank}/{info.world_size})", disable=not info.is_main)
    for split, videos in todo.items():
        group, reader = root[split], readers[split]
        offsets = group["offsets"][:]
        for k in videos:
            frames = reader.read_frames(int(k))
            latents = np.stack([
                vq.encode(to_model_range(apply_view(frames, view, cfg.seed, split, int(k), i)).to(info.device)).cpu().numpy()
                for i, view in enumerate(views)
            ]).astype(dtype)
            require_finite(latents, f"{url}: the VQVAE's latents of {split} video {k} ({reader.videos[k].source})",
                           f"not written, the video stays unflagged (check vqvae.ckpt={cfg.vqvae.ckpt} and encode.dtype)")
            start = int(offsets[k])
            write_array(group["latents"], (slice(None), slice(start, start + len(frames))), latents)
            group["done"][int(k)] = True  # last: a video counts as done only once its latents are written
            bar.update(latents.shape[0] * latents.shape[1])
    bar.close()


def _finish(cfg: Config, url: str, log) -> None:
    """Rank 0, after every rank finished: check completeness, record latent statistics, mark complete."""
    root = open_store(url, mode="r+")
    stats = {}
    for split in root.group_keys():
        missing = int((~root[split]["done"][:]).sum())
        if missing:
            raise RuntimeError(f"{url}: {missing} videos of '{split}' are not encoded after all ranks finished")
        stats[split] = channel_stats(LatentSplit(url, split), cfg.encode.stats_max_frames)
    root.attrs.update({"stats": stats, "complete": True})
    log(f"encode: {url} complete")


def channel_stats(split: LatentSplit, max_frames: int) -> dict[str, list[float]]:
    """Per-channel mean and std of the identity view over at most ``max_frames`` frames (recorded, not applied)."""
    every = max(1, -(-int(split.lengths.sum()) // max_frames))
    sums = np.zeros(split.latent_shape[0])
    squares = np.zeros(split.latent_shape[0])
    count = 0
    for k in range(len(split)):
        frames = split.video(k)[::every].astype(np.float64)
        sums += frames.sum(axis=(0, 2, 3))
        squares += (frames**2).sum(axis=(0, 2, 3))
        count += frames.shape[0] * frames.shape[2] * frames.shape[3]
    mean = sums / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0))
    return {"mean": mean.tolist(), "std": std.tolist(), "frames_used": int(count // (split.latent_shape[1] * split.latent_shape[2]))}

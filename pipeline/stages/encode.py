"""Stage 1: encode ``<data.root>/<split>/*.hdf5`` once with the frozen VQVAE into ``latents.zarr``
(layout: :mod:`pipeline.data.cache`), following :mod:`pipeline.run.protocol` (a rebuild goes beside the old store).

The fingerprint covers VQVAE identity, shard checksums, pixel transform, views, storage and format. Inputs are
validated before anything is written. Each video's latents are written before its ``done`` flag and encoded in
per-video batches, so a resumed or distributed store equals a one-shot one.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from tqdm import tqdm

from pipeline.data.cache import FORMAT_VERSION, LatentSplit, create_split, video_chunks
from pipeline.data.checked_store import (CRC_INDEX, ForeignStoreError, delete_store, open_store, record_crcs,
                                         require_finite, store_attrs, write_array)
from pipeline.run.config import Config, VQVAEConfig
from pipeline.data.shards import ShardError, ShardReader, split_dirs
from pipeline.run.protocol import Output, Verdict, decide, local_lock, settle, up_to_date_line
from pipeline.run.records import KnownHashes, cached_sha256, changed_keys, code_version, replace_directory
from pipeline.data.views import View, apply_view, make_views

if TYPE_CHECKING:
    from pipeline.run.dist import DistInfo

PIXEL_TRANSFORM = "uint8 HWC -> float32 CHW, x / 127.5 - 1, no resize (shards hold image_size frames)"
REMEDY = "Refusing to mix old and new latents: rerun with --force (make encode FORCE=1) to rebuild."


class EncodeError(RuntimeError):
    """Stage 1 cannot proceed (bad input, missing checkpoint, ...); the message says why."""


class StaleCacheError(EncodeError):
    """The existing store was built from different inputs; the message names them."""


def encoded_splits(cfg: Config) -> list[str]:
    """The splits of ``data.splits`` the data settings produce (KTH without validation persons has no 'val')."""
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
        **_config_inputs(cfg, views),
    }


def check_store_data(cfg: Config, split: LatentSplit) -> None:
    """Refuse a store that holds other data than ``cfg`` describes: its recorded inputs must equal what this config
    gives for the shards (by checksum), pixel transform, views, storage and format, as encode would find them (the
    VQVAE is checked where it is used: :func:`pipeline.stages.forecast_state.check_vqvae`). Where the shards are not
    at ``data.root`` (a machine that holds only the latent cache) the data is identified by the ``data.name`` and
    ``data.source`` the store's config recorded instead of by shard checksums."""
    recorded = split.attrs.get("inputs") or {}
    data = (split.attrs.get("config") or {}).get("data") or {}
    mine = {"format": FORMAT_VERSION, **_config_inputs(cfg, make_views(cfg.encode))}
    theirs = {k: recorded.get(k) for k in mine}
    try:
        readers = _readers(cfg)
    except ShardError:
        mine["data"], theirs["data"] = {"name": cfg.data.name, "source": cfg.data.source}, {k: data.get(k) for k in ("name", "source")}
    else:
        hashes = dict(split.attrs.get("file_hashes") or {})  # shards unchanged since encoding are not read again
        mine["shards"], theirs["shards"] = {f"{s}/{shard.name}": cached_sha256(shard, hashes) for s, r in readers.items()
                                            for shard in sorted({v.shard for v in r.videos})}, recorded.get("shards")
    changed = changed_keys(theirs, mine)
    if changed:
        raise ForeignStoreError(
            f"{split.url} holds latents of other data than this config gives (differ: {', '.join(changed[:6])}"
            f"{' ...' if len(changed) > 6 else ''}); it was encoded by a config with data.name={data.get('name', '?')}, "
            f"data.root={data.get('root', '?')}: use that config, or encode this one's data into its own store "
            "(make encode; FORCE=1 replaces this store)")


def _config_inputs(cfg: Config, views: list[View]) -> dict[str, Any]:
    """The parts of the fingerprint that the config alone gives: pixel transform, views and storage."""
    return {
        "transform": {"image_size": cfg.data.image_size, "pixels": PIXEL_TRANSFORM},
        "views": {"seed": cfg.seed, "list": [v.describe() for v in views]},
        "storage": {"dtype": cfg.encode.dtype, "chunk_frames": cfg.encode.chunk_frames, "clevel": cfg.encode.compression_level},
    }


def encode_latents(cfg: Config, url: str, force: bool = False, dry_run: bool = False,
                   log: Callable[[str], None] = print) -> str:
    """Bring the store at ``url`` up to date: 'up to date', 'encoded' or 'dry run'. Every torchrun rank calls this;
    rank 0 decides, locks and creates, all ranks encode disjoint videos."""
    from pipeline.run.dist import barrier, init_distributed  # torch: only past the torch-free check

    info = init_distributed()
    readers, views, hashes = _readers(cfg), make_views(cfg.encode), {}
    videos = sum(len(r.videos) for r in readers.values())

    def create(verdict: Verdict) -> None:
        _create(cfg, verdict, readers, views, hashes)
        log(f"encode: created {verdict.target} (fingerprint {verdict.key}, {len(views)} view(s))")

    with ExitStack() as held:  # rank 0 holds the store's lock until every rank has finished
        verdict = settle(_output(cfg, url), lambda: _decide(cfg, url, readers, views, force, hashes), held, log,
                         dry_run, (StaleCacheError, EncodeError), what=f" ({videos} videos, {len(views)} view(s))",
                         then=create)
        if dry_run or verdict.action == "up to date":
            return "dry run" if dry_run else verdict.action
        barrier()
        _encode_my_videos(cfg, verdict.target, readers, views, info, log)
        barrier()
        if info.is_main:
            _finish(cfg, verdict.target, log)
            if verdict.target != url:
                replace_directory(verdict.target, url)
                log(f"encode: {url} replaced by its rebuild")
        barrier()
    return "encoded"


def up_to_date_message(cfg: Config, url: str) -> str | None:
    """The stage's "up to date" line, decided without torch or hashing, else None."""
    return up_to_date_line(lambda: _decide(cfg, url, _readers(cfg), make_views(cfg.encode), False, KnownHashes()))


def _readers(cfg: Config) -> dict[str, ShardReader]:
    """A shard reader per encoded split, unvalidated: unchanged checksums mean the shards validated at build time."""
    return {s: ShardReader(d, image_size=cfg.data.image_size, validate=False)
            for s, d in split_dirs(cfg.data.root, encoded_splits(cfg)).items()}


def _output(cfg: Config, url: str) -> Output:
    return Output("encode", url, "built", REMEDY, beside="://" not in url, read=store_attrs, lock=local_lock(url),
                  notes={"vqvae.": f" (VQVAE checkpoint {cfg.vqvae.ckpt})"})


def _decide(cfg, url, readers, views, force, hashes: dict[str, Any]) -> Verdict:
    """Compare the store's fingerprint with the one ``cfg`` gives, changing nothing (fills ``hashes``)."""
    old = store_attrs(url)
    hashes.update(old.get("file_hashes", {}))
    inputs = cache_inputs(cfg, readers, views, hashes)
    return decide(_output(cfg, url), old, inputs, force, complete=bool(old.get("complete")))


def _create(cfg: Config, verdict: Verdict, readers, views, hashes) -> None:
    """Validate the shards and the VQVAE weights, then create the store, replacing whatever sits at the target
    (nothing is written before the inputs check out)."""
    import zarr  # local: only rank 0 creates

    from pipeline.vqvae import build_vqvae

    for reader in readers.values():
        reader.validate()
    probe = build_vqvae(cfg.vqvae, cfg.data.image_size).latent_shape()  # the encoder loads it again, on every rank
    if open_store(verdict.target) is not None:
        delete_store(verdict.target)
    root = zarr.open_group(verdict.target, mode="w")
    for split, reader in readers.items():
        videos = [{"shard": v.shard.name, "key": v.key, "source": v.source, "length": v.length} for v in reader.videos]
        create_split(root, split, videos, len(views), probe, cfg.encode.dtype, cfg.encode.chunk_frames, cfg.encode.compression_level)
    root.attrs.update({
        "fingerprint": verdict.key, "inputs": verdict.inputs, "file_hashes": hashes, "complete": False,
        "views": [v.name for v in views], "latent_shape": list(probe), "dtype": cfg.encode.dtype,
        "chunk_frames": cfg.encode.chunk_frames, "vqvae_ckpt": str(cfg.vqvae.ckpt),
        "config": cfg.to_dict(), "code_version": code_version(),
    })


def _encode_my_videos(cfg: Config, url: str, readers, views, info: DistInfo, log) -> None:
    """Encode this rank's share (every world_size-th unfinished video) of every split."""
    from pipeline.data.clips import to_model_range
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
            record_crcs(group[CRC_INDEX], int(k), video_chunks(group["latents"], start, len(frames)))
            write_array(group["done"], int(k), True)  # last: a video counts as done only once its latents are written
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

"""Stage 3: forecast test videos with a trained flow into ``<run>/forecasts.zarr`` and ``media/forecast_<k>.{gif,mp4}``.

Reads the latent store (conditioning latents, view 0: nothing is re-encoded), the split's shards (ground-truth
pixels), a flow checkpoint (EMA weights by default) and the frozen VQVAE decoder. Every video of ``forecast.split``
holding a clip (``data.clip_span`` raw frames; the first ``forecast.max_videos`` if > 0) gives its first clip:
T = ``data.frames_per_sample`` frames at raw frames 0, s, 2s, ... (s = ``data.skip_frames`` + 1). Its first
``data.cond_frames`` cached latents condition ``sample.n_samples`` rollouts of the rest (KTH 10 -> 30, CLEVRER 2 -> 14).

Store (zarr v3, codecs as ``latents.zarr``; chunk 1 along the video axis N, so ranks never share a chunk)::

    attrs: fingerprint, inputs, config, format, ckpt, ckpt_kind, ckpt_step, use_ema, latent_norm, split, cond_frames,
           gen_frames, n_samples, image_size, nfe_per_frame, solver, start, frame_indices, latent_shape, latent_store,
           file_hashes, complete, code_version, videos [{index, source, shard, key}]
    real     uint8   [N, T, H, W, 3]        ground-truth clip pixels, read from the shards
    recon    uint8   [N, T, H, W, 3]        decode(cached latents of the clip): the VQ ceiling
    samples  uint8   [N, S, T, H, W, 3]     decoded forecasts; frames [:cond] = the decoded conditioning latents
    latents  float32 [N, S, T, C, h, w]     the latent rollouts (conditioning latents, then generated ones)
    truth_latents float32 [N, T, C, h, w]   the cached latents of the clip (the latent-space truth for scoring)
    chunk_crc uint32 [N, S + 4]             the CRC32C of each chunk of the row as written (real, recon, samples,
                                            latents, truth_latents: :data:`ROW_ARRAYS`), so a swapped one is refused
    done     bool    [N]                    set after the video's five arrays are written

Determinism: rollout (video k, sample j) draws all its randomness from a generator seeded by (sample.seed, k, j),
videos are rolled out in fixed groups (:func:`work_groups`) and decoded per video, so a resumed or sharded run
writes the same arrays as an uninterrupted one; ``sample.batch_size`` (not fingerprinted) changes only float
round-off. The store follows :mod:`pipeline.run.protocol` (decision: :mod:`pipeline.stages.forecast_state`).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.cache import LatentSplit
from pipeline.data.checked_store import checked_compressors, delete_store, open_store, require_finite, write_array
from pipeline.run.checkpoints import FlowCheckpoint, load_flow_checkpoint
from pipeline.run.config import Config
from pipeline.data.clips import clip_frame_indices, to_uint8
from pipeline.data.shards import ShardReader
from pipeline.run.dist import DistInfo, barrier, broadcast_object, init_distributed
from pipeline.stages.forecast_media import write_media
from pipeline.stages.encode import check_store_data
from pipeline.stages.forecast_state import (FORMAT_VERSION, ROW_ARRAYS, ForecastError, StaleForecastError,
                                            create_row_index, decide_forecasts, default_checkpoint, forecast_output,
                                            forecast_url, record_row)
from pipeline.core.interpolants import build_interpolant
from pipeline.run.protocol import Verdict, settle
from pipeline.run.records import changed_keys, code_version, replace_directory
from pipeline.core.rng import RowGenerators
from pipeline.run.tracking import log_forecast

SEED_TAG = 3  # separates the forecast streams from other users of sample.seed


def clip_frames(cfg: Config) -> np.ndarray:
    """Raw frame indices of the forecast clip: T frames at stride skip + 1 from raw frame 0."""
    return clip_frame_indices(0, cfg.data.frames_per_sample, cfg.data.skip_frames)


def select_videos(lengths: np.ndarray, cfg: Config, log: Callable[[str], None] = print) -> np.ndarray:
    """Split indices of the forecast videos: those holding a clip, in split order, the first max_videos (0 = all);
    logs how many videos are skipped as shorter than a clip."""
    eligible = np.flatnonzero(np.asarray(lengths) >= cfg.data.clip_span)
    if len(eligible) < len(lengths):
        log(f"forecast: skipping {len(lengths) - len(eligible)} of {len(lengths)} videos of split "
            f"'{cfg.forecast.split}' shorter than a clip ({cfg.data.clip_span} raw frames)")
    if cfg.forecast.max_videos:
        eligible = eligible[: cfg.forecast.max_videos]
    if len(eligible) == 0:
        raise ForecastError(f"no video of split '{cfg.forecast.split}' holds a clip of {cfg.data.clip_span} raw frames")
    return eligible


def row_seed(seed: int, video: int, sample: int) -> int:
    """Seed of the generator of rollout (video, sample): a pure function of the sampling seed and the indices."""
    state = np.random.SeedSequence([seed, video, sample, SEED_TAG]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def row_generators(seed: int, videos: np.ndarray, n_samples: int, device: torch.device) -> RowGenerators:
    """One generator per rollout, video-major (all samples of videos[0] first)."""
    return RowGenerators([
        torch.Generator(device=device).manual_seed(row_seed(seed, int(v), j)) for v in videos for j in range(n_samples)
    ])


def work_groups(n_videos: int, n_samples: int, batch_size: int) -> list[np.ndarray]:
    """Fixed groups of consecutive store rows rolled out together: max(1, batch_size // n_samples) videos each."""
    per = max(1, batch_size // n_samples)
    return [np.arange(i, min(i + per, n_videos)) for i in range(0, n_videos, per)]


def nfe_per_frame(cfg: Config, interpolant) -> int:
    """Network evaluations per generated frame for the sampler settings (a dry run on a zero network)."""
    from pipeline.core.sampling import generate_frame

    history = torch.zeros(1, 3, 1, 1, 1)
    zero = lambda z, t, ref, context, gap: torch.zeros_like(z)  # noqa: E731
    _, nfe = generate_frame(zero, interpolant, history, 2, cfg.sample, generator=torch.Generator().manual_seed(0))
    return nfe


@dataclass
class _Plan:
    """What this run forecasts: the store rows' split indices, the clip's raw frames and the sizes."""

    videos: np.ndarray  # split index of each store row
    frames: np.ndarray  # raw frame indices of the clip [T]
    n_samples: int
    cond: int
    gen: int
    latent_shape: tuple[int, int, int]


def forecast(cfg: Config, store: str, run: str | Path, ckpt: str | Path | None = None, force: bool = False,
             dry_run: bool = False, log: Callable[[str], None] = print) -> str:
    """Bring ``<run>/forecasts.zarr`` up to date on every torchrun rank: 'up to date', 'forecast' or 'dry run'.
    ``store``: the latent store; ``ckpt``: any flow checkpoint (default ``<run>/checkpoints/latest.pt``)."""
    info = init_distributed()
    run = Path(run)
    url = forecast_url(run)
    ckpt_path = Path(ckpt) if ckpt else default_checkpoint(run)
    split = LatentSplit(store, cfg.forecast.split)
    if not split.attrs.get("complete"):
        raise ForecastError(f"{store} is not complete: finish `make encode` first")
    check_store_data(cfg, split)
    plan = _Plan(select_videos(split.lengths, cfg, log if info.is_main else lambda _: None), clip_frames(cfg), cfg.sample.n_samples, cfg.data.cond_frames,
                 cfg.data.frames_per_sample - cfg.data.cond_frames, tuple(split.latent_shape))
    # Checks every rank makes alike before anything is written (so no rank waits for a failed one).
    reader = ShardReader(Path(cfg.data.root) / cfg.forecast.split, image_size=cfg.data.image_size, validate=False)
    _check_shards(reader, split)
    nfe_per_frame(cfg, build_interpolant(cfg.interpolant))  # solver / diffusion combination errors

    hashes: dict[str, Any] = {}
    with ExitStack() as held:  # rank 0 holds the store's lock until every rank has finished
        verdict = settle(forecast_output(url, ckpt_path), lambda: decide_forecasts(cfg, url, split, ckpt_path, force, hashes),
                         held, log, dry_run, (StaleForecastError, ForecastError), clean=[run / "media"],
                         what=f" ({len(plan.videos)} videos x {plan.n_samples} samples)")
        if dry_run or verdict.action == "up to date":
            if not dry_run and info.is_main:
                write_media(cfg, url, run / "media", log, only_missing=True)
            return "dry run" if dry_run else verdict.action
        # Loaded on every rank before anything is created or replaced: a bad checkpoint changes nothing.
        flow, ckpt_info = load_flow(cfg, ckpt_path, info.device, log if info.is_main else lambda _: None)
        created = _create_store(cfg, verdict, split, plan, hashes, ckpt_path, ckpt_info, store, log) \
            if info.is_main else None
        created = broadcast_object(created)
        if created:
            raise ForecastError(created)
        barrier()
        _forecast_my_groups(cfg, verdict.target, split, reader, plan, flow, info, ckpt_info["latent_norm"])
        barrier()
        if info.is_main:
            _finish(verdict.target, log)
            if verdict.target != url:
                replace_directory(verdict.target, url)
                log(f"forecast: {url} replaced by its rebuild")
            log_forecast(cfg, run, url, write_media(cfg, url, run / "media", log), log)
        barrier()
    return "forecast"


def _create_store(cfg: Config, verdict: Verdict, split: LatentSplit, plan: _Plan, hashes, ckpt_path: Path,
                  ckpt_info: dict, store: str, log) -> str | None:
    """Rank 0: create the store (replacing leftovers) unless resuming; an error message for every rank, or None."""
    try:
        trained_on = (ckpt_info.get("cache_fingerprint") or "") if ckpt_info["kind"] == "pipeline" else ""
        if trained_on and trained_on != split.attrs["fingerprint"]:
            log(f"forecast: note: {ckpt_path} was trained on latent cache {trained_on}, forecasting from "
                f"{split.attrs['fingerprint']} (same VQVAE checked; other shards or views)")
        if verdict.action == "resume":
            return None
        if open_store(verdict.target) is not None:
            delete_store(verdict.target)
        _create(cfg, verdict, split, plan, hashes, ckpt_path, ckpt_info, store)
        log(f"forecast: created {verdict.target} ({len(plan.videos)} videos x {plan.n_samples} samples, "
            f"{plan.cond} -> {plan.gen} frames, fingerprint {verdict.key})")
        return None
    except Exception as exc:  # reported to every rank, so none waits forever
        return f"{type(exc).__name__}: {exc}"


def load_flow(cfg: Config, path: str | Path, device: torch.device, log: Callable[[str], None] = print):
    """(network in eval mode on ``device``, info dict) from any flow checkpoint; EMA weights if asked and present.
    ``info["latent_norm"]``: the latent standardisation it was trained with (off when it records none)."""
    from pipeline.core.latent_norm import LatentNorm
    from pipeline.core.model import build_model

    ckpt = load_flow_checkpoint(path)
    try:
        norm = LatentNorm.from_record(ckpt.raw.get("latent_norm"), str(path))
    except ValueError as exc:
        raise ForecastError(str(exc)) from None
    if ckpt.kind == "pipeline":
        _check_trained_config(cfg, ckpt)
    use_ema = bool(cfg.forecast.use_ema and (ckpt.ema or ckpt.holds_ema_weights))
    if cfg.forecast.use_ema and not use_ema:
        log(f"forecast: {path} has no EMA weights; using the raw model weights")
    if not cfg.forecast.use_ema and ckpt.holds_ema_weights:
        log(f"forecast: {path} holds only the EMA weights (exported for sampling); using them")
    model = build_model(cfg.model)
    try:
        model.load_state_dict(ckpt.weights(use_ema))
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        raise ForecastError(f"{path}: its weights do not fit the configured model (model.* settings): "
                            + " ".join(lines[:4])[:600]) from None
    model.to(device).eval().requires_grad_(False)
    info = {"kind": ckpt.kind, "step": ckpt.step, "use_ema": use_ema, "cache_fingerprint": ckpt.raw.get("cache_fingerprint"),
            "latent_norm": norm}
    return model, info


def _check_trained_config(cfg: Config, ckpt: FlowCheckpoint) -> None:
    """Our checkpoints record their config: refuse to sample with another network or interpolant than trained."""
    from pipeline.run.config import InterpolantConfig

    trained = ckpt.config if isinstance(ckpt.config, dict) else {}
    if not trained:
        return
    mine = {"model": asdict(cfg.model), "interpolant": cfg.interpolant.resolved()}
    theirs_interp = InterpolantConfig(**{k: v for k, v in trained.get("interpolant", {}).items()
                                         if k in ("kind", "base", "beta", "eps", "ours_eps")})
    theirs = {"model": trained.get("model", {}), "interpolant": theirs_interp.resolved()}
    changed = changed_keys(theirs, mine)
    if changed:
        kind = trained.get("interpolant", {}).get("kind")
        same = (f"--set interpolant.ours_eps={theirs_interp.ours_eps}" if kind == cfg.interpolant.kind == "ours"
                else f"--interp {kind}")
        raise ForecastError(f"{ckpt.path} was trained with other settings (differ: {', '.join(changed[:6])}; trained "
                            f"interpolant.kind={kind}); forecast with the same model/interpolant (e.g. {same})")


class _ProgressModel:
    """Calls the network and advances the progress bar by the batch's rows after every generated frame."""

    def __init__(self, model: torch.nn.Module, bar: tqdm, nfe: int):
        self.model, self.bar, self.nfe, self.calls = model, bar, max(nfe, 1), 0

    def __call__(self, z, t, ref, context, gap):
        out = self.model(z, t, ref, context, gap)
        self.calls += 1
        if self.calls % self.nfe == 0:
            self.bar.update(z.shape[0])
        return out


def _create(cfg: Config, verdict: Verdict, split: LatentSplit, plan: _Plan, hashes, ckpt_path: Path,
            ckpt_info: dict, store: str) -> None:
    import zarr

    from pipeline.core.sampling import resolve_solver, resolve_start, sampling_diffusion

    n, s, t = len(plan.videos), plan.n_samples, len(plan.frames)
    size = cfg.data.image_size
    root = zarr.open_group(verdict.target, mode="w")
    codec = dict(compressors=checked_compressors(cfg.encode.compression_level), fill_value=0)
    root.create_array("real", shape=(n, t, size, size, 3), chunks=(1, t, size, size, 3), dtype="uint8", **codec)
    root.create_array("recon", shape=(n, t, size, size, 3), chunks=(1, t, size, size, 3), dtype="uint8", **codec)
    root.create_array("samples", shape=(n, s, t, size, size, 3), chunks=(1, 1, t, size, size, 3), dtype="uint8", **codec)
    for name, shape in (("latents", (n, s, t)), ("truth_latents", (n, t))):  # NaN fill: never mistaken for latents
        root.create_array(name, shape=(*shape, *plan.latent_shape), chunks=(1, *shape[1:], *plan.latent_shape),
                          dtype="float32", **{**codec, "fill_value": float("nan")})
    create_row_index(root, cfg.encode.compression_level)
    root.create_array("done", shape=(n,), chunks=(1,), dtype=bool, **{**codec, "fill_value": False})
    interpolant = build_interpolant(cfg.interpolant)
    solver = resolve_solver(cfg.sample, interpolant)
    start = resolve_start(cfg.sample, sampling_diffusion(cfg.sample, interpolant, solver))
    videos = [{"index": int(k), "source": split.videos[k]["source"], "shard": split.videos[k]["shard"],
               "key": split.videos[k]["key"]} for k in plan.videos]
    root.attrs.update({
        "fingerprint": verdict.key, "inputs": verdict.inputs, "config": cfg.to_dict(), "format": FORMAT_VERSION,
        "ckpt": str(ckpt_path), "ckpt_kind": ckpt_info["kind"], "ckpt_step": int(ckpt_info["step"]),
        "use_ema": ckpt_info["use_ema"], "latent_norm": ckpt_info["latent_norm"].record(), "split": cfg.forecast.split,
        "cond_frames": plan.cond, "gen_frames": plan.gen,
        "n_samples": s, "image_size": size, "nfe_per_frame": nfe_per_frame(cfg, interpolant),
        "solver": solver, "start": start, "frame_indices": [int(f) for f in plan.frames],
        "latent_shape": list(plan.latent_shape), "latent_store": store, "file_hashes": hashes,
        "complete": False, "code_version": code_version(), "videos": videos,
    })


def _forecast_my_groups(cfg: Config, url: str, split: LatentSplit, reader: ShardReader, plan: _Plan, model,
                        info: DistInfo, norm) -> None:
    """Roll out (in the flow's coordinates ``norm``), decode and write this rank's share (every world_size-th
    unfinished group) of the videos."""
    from pipeline.core.sampling import rollout
    from pipeline.vqvae import build_vqvae

    root = open_store(url, mode="r+")
    done = root["done"][:]
    groups = [g for g in work_groups(len(plan.videos), plan.n_samples, cfg.sample.batch_size) if not done[g].all()]
    mine = groups[info.rank :: info.world_size]
    if not mine:
        return
    interpolant = build_interpolant(cfg.interpolant)
    vq = build_vqvae(cfg.vqvae, cfg.data.image_size).drop_encoder().to(info.device)  # decode only: no re-encoding
    device, s, batch = info.device, plan.n_samples, cfg.sample.batch_size
    total = sum(len(g) for g in mine) * s * plan.gen
    bar = tqdm(total=total, unit="frame", desc=f"forecast (rank {info.rank}/{info.world_size})", disable=not info.is_main,
               smoothing=0.1)
    net = _ProgressModel(model, bar, int(root.attrs["nfe_per_frame"]))
    for group in mine:
        clips = {int(r): _clip_latents(split, int(plan.videos[r]), plan.frames) for r in group}
        cond = torch.stack([torch.from_numpy(clips[int(r)][: plan.cond]) for r in group]).to(device)
        rows = cond.repeat_interleave(s, dim=0)
        gens = row_generators(cfg.sample.seed, plan.videos[group], s, device)
        parts = [rollout(net, interpolant, rows[i : i + batch], plan.gen, cfg.sample, gens[i : i + batch], norm).latents
                 for i in range(0, rows.shape[0], batch)]
        latents = torch.cat(parts).view(len(group), s, *parts[0].shape[1:])
        for j, r in enumerate(int(r) for r in group):
            if done[r]:  # written by an earlier, interrupted run: identical by construction
                continue
            source = split.videos[int(plan.videos[r])]["source"]
            require_finite(latents[j], f"{url}: the generated latents of video {int(plan.videos[r])} ({source})",
                           "not written, the video stays unflagged (a diverged or mismatched flow checkpoint?)")
            _write_row(root, r, reader, int(plan.videos[r]), plan, clips[r], latents[j], vq)
    bar.close()


def _clip_latents(split: LatentSplit, video: int, frames: np.ndarray) -> np.ndarray:
    """Cached latents of the clip (view 0) as float32 [T, C, h, w]."""
    global_frames = int(split.offsets[video]) + frames
    return split.read_frames(np.zeros_like(global_frames), global_frames).astype(np.float32)


def _check_shards(reader: ShardReader, split: LatentSplit) -> None:
    """The shards must be the ones the cache was encoded from (same videos, keys and lengths, in order)."""
    mine = [(Path(v.shard).name, v.key, v.length) for v in reader.videos]
    cached = [(v["shard"], v["key"], v["length"]) for v in split.videos]
    if mine != cached:
        raise ForecastError(f"{reader.path}: the shards differ from the ones {split.url} was encoded from; re-encode")


@torch.no_grad()
def _write_row(root, row: int, reader: ShardReader, video: int, plan: _Plan, clip: np.ndarray, latents: torch.Tensor,
               vq) -> None:
    """Decode one video's clip and forecasts and write its arrays; the done flag goes last."""
    device = vq.device
    real = reader.read_frames(video, plan.frames)
    recon = to_uint8(vq.decode(torch.from_numpy(clip).to(device)))  # [T, H, W, 3]
    s, gen = plan.n_samples, plan.gen
    generated = latents[:, plan.cond :].reshape(s * gen, *latents.shape[2:])
    pixels = to_uint8(vq.decode(generated.to(device))).reshape(s, gen, *recon.shape[1:])
    samples = np.concatenate([np.broadcast_to(recon[None, : plan.cond], (s, plan.cond, *recon.shape[1:])), pixels], axis=1)
    arrays = {"real": real, "recon": recon, "samples": samples, "latents": latents.cpu().numpy(), "truth_latents": clip}
    for name in ROW_ARRAYS:
        write_array(root[name], row, arrays[name])
    record_row(root, row)
    write_array(root["done"], row, True)  # last: a video counts as done only once everything else is written


def _finish(url: str, log) -> None:
    root = open_store(url, mode="r+")
    missing = int((~root["done"][:]).sum())
    if missing:
        raise ForecastError(f"{url}: {missing} videos are not forecast after all ranks finished")
    root.attrs["complete"] = True
    log(f"forecast: {url} complete")

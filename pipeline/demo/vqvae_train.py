"""Train the demo's own VQVAE: the taming f8 architecture at a small width, on the demo's training frames.

    python -m pipeline.demo.vqvae_train --config configs/demo.yaml [--set autoencoder.steps=...] [--smoke] [--fresh]
    python -m pipeline.demo.vqvae_train psnr --config configs/demo.yaml [--ckpt file]

Recipe (configs/demo.yaml's ``autoencoder`` section trained ``checkpoints/demo_vqvae.pt`` in 25 minutes on a 2-core
CPU: test PSNR 35.3 dB per frame, 23.7 dB on sprite pixels; 98.9 % of sprites read back in their own colour, 0.37 px
RMS):

* loss = l1 * |x - y| + mse * (x - y)^2 + the quantiser's loss, straight-through estimator. The quantiser's loss
  is the standard VQ-VAE form, codebook ||z_q - sg[z]||^2 + beta * commitment ||sg[z_q] - z||^2 (``autoencoder.beta``,
  0.25; taming's ``legacy=False``), which trained ``checkpoints/demo_vqvae.pt``. Taming's default ``legacy=True``
  (LDM's VQModel, most likely what trained RIVER's KTH VQVAE) puts beta on the codebook term instead: the same loss
  value, but there the encoder's gradient from this term is 1/beta (4x) the one here (docs/METHOD.md §9.26);
* the first ``quantize_after`` steps train a plain autoencoder; the codebook is then initialised by k-means on
  encoder outputs and quantisation switched on; every ``restart_every`` steps codes unused since the last
  check are restarted at random current encoder outputs (their Adam moments zeroed);
* full frames by default; optionally random (most-varied-of-k) crops with a final full-frame phase, and a loss that
  weighs pixels unlike the frame's median colour (objects, with a 2 px rim) ``1 + foreground_weight``;
* bfloat16 autocast for the convolutions, float32 for the codebook search; ``threads`` CPU threads (1 by default:
  two threads on a CPU shared with other jobs once thrashed, 9 s/step instead of 0.5 s/step, before the stages'
  ``OMP_WAIT_POLICY=PASSIVE`` default, pipeline/run/threads.py);
* AdamW with linear warm-up and cosine decay; runs are deterministic (a rerun gives bit-identical weights).

Resumable: ``<out_dir>/latest.pt`` (model, optimiser, step, code-usage counters, RNG states, config) is written
atomically every ``checkpoint_every`` steps and at the end; a rerun continues from it (``--fresh`` starts over).
At the end the model is exported as a flat state dict to ``autoencoder.export`` (default ``<out_dir>/vqvae.pt``), with a
JSON record beside it, and the reconstruction PSNR on a few val videos is printed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
import typer
from tqdm import tqdm

from pipeline.run.cli import ConfigOption, DataRootOption, SetOption, SmokeOption, fail, load_cli_config
from pipeline.run.config import AutoencoderConfig, Config
from pipeline.demo.state import STATE_FILE
from pipeline.data.shards import ShardError, ShardReader
from pipeline.run.records import atomic_path, code_version, read_json, sha256_file, write_json_atomic
from pipeline.run.safe_load import safe_torch_load
from pipeline.vqvae import FrozenVQVAE, build_model, build_vqvae
from pipeline.vqvae.taming import VQModel, nearest_rows

LATEST = "latest.pt"
FOREGROUND_TOL = 0.1  # a pixel is foreground when a channel differs from its frame's median by more ([-1, 1] units)
FOREGROUND_RADIUS = 2  # and the foreground is dilated by this many pixels (the objects' rims)
# autoencoder keys that do not change what is trained (may differ between a run and its resumption)
_RESUME_NEUTRAL = {"out_dir", "export", "threads", "log_every", "checkpoint_every", "val_videos", "eval_split",
                   "eval_videos", "max_minutes", "export_float16"}


class TrainError(RuntimeError):
    """Training cannot start or resume (bad data, a checkpoint from a different configuration)."""


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def load_split_frames(root: str | Path, split: str, image_size: int, frame_stride: int = 1, max_videos: int = 0) -> torch.Tensor:
    """Every ``frame_stride``-th frame of the first ``max_videos`` (0 = all) videos of a split: uint8 [N, H, W, 3]."""
    reader = ShardReader(Path(root) / split, image_size=image_size)
    try:
        count = len(reader) if max_videos <= 0 else min(max_videos, len(reader))
        chunks = []
        for video in range(count):
            indices = np.arange(0, int(reader.lengths[video]), frame_stride)
            chunks.append(reader.read_frames(video, indices))
    finally:
        reader.close()
    return torch.from_numpy(np.concatenate(chunks))


def to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1] (x / 127.5 - 1)."""
    return frames.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def sample_batch(
    frames: torch.Tensor, batch_size: int, crop: int, flip: bool, gen: torch.Generator, candidates: int = 1
) -> torch.Tensor:
    """Random frames as float32 [B, 3, s, s] in [-1, 1]: random crops of side ``crop`` if > 0, random flips.

    With ``candidates`` > 1, each crop is the one with the largest pixel variance among that many random
    crops of the frame: fewer crops of flat background, more of the content that is hard to reconstruct.
    """
    n, h, w, _ = frames.shape
    batch = frames[torch.randint(n, (batch_size,), generator=gen)]
    if crop and crop < h:
        k = max(1, candidates)
        ys = torch.randint(h - crop + 1, (batch_size, k), generator=gen)
        xs = torch.randint(w - crop + 1, (batch_size, k), generator=gen)
        crops = []
        for img, yy, xx in zip(batch, ys.tolist(), xs.tolist()):
            options = [img[y : y + crop, x : x + crop] for y, x in zip(yy, xx)]
            if k > 1:
                options = [max(options, key=lambda c: float(c.float().var()))]
            crops.append(options[0])
        batch = torch.stack(crops)
    if flip:
        flips = torch.rand(batch_size, 2, generator=gen) < 0.5
        batch = batch.clone()
        batch[flips[:, 0]] = batch[flips[:, 0]].flip(1)
        batch[flips[:, 1]] = batch[flips[:, 1]].flip(2)
    return to_pixels(batch)


def foreground_weights(x: torch.Tensor, weight: float, tol: float = FOREGROUND_TOL, radius: int = FOREGROUND_RADIUS) -> torch.Tensor:
    """Per-pixel loss weights [B, 1, H, W]: 1 + ``weight`` on pixels within ``radius`` of one whose colour differs
    from its frame's median colour by more than ``tol`` in some channel ([-1, 1] units), 1 elsewhere.

    On frames of small objects over a plain background (the demo) the objects are a few percent of the pixels, so a
    plain mean lets the background dominate the loss; the dilation adds the object's rim, where its position is.
    """
    median = x.flatten(2).median(dim=2).values[..., None, None]
    foreground = ((x - median).abs().amax(dim=1, keepdim=True) > tol).float()
    if radius:
        foreground = F.max_pool2d(foreground, 2 * radius + 1, stride=1, padding=radius)
    return 1.0 + weight * foreground


def reconstruction_loss(x: torch.Tensor, y: torch.Tensor, ae: AutoencoderConfig) -> torch.Tensor:
    """l1_weight * |x - y| + mse_weight * (x - y)^2, averaged over pixels weighted by :func:`foreground_weights`
    when ``ae.foreground_weight`` > 0 (normalised by the mean weight, so the loss keeps its scale)."""
    err = y - x
    if not ae.foreground_weight:
        return ae.l1_weight * err.abs().mean() + ae.mse_weight * err.square().mean()
    w = foreground_weights(x, ae.foreground_weight)
    per_pixel = ae.l1_weight * err.abs() + ae.mse_weight * err.square()
    return (w * per_pixel).mean() / w.mean()


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------


def frame_psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR on [-1, 1] data: 10 log10(4 / MSE) over [N, 3, H, W] -> [N] (MSE floored at 1e-10)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(4.0 / mse)


@torch.no_grad()
def reconstruction_psnr(vq: FrozenVQVAE, frames: torch.Tensor, batch_size: int = 64, progress: bool = False) -> tuple[float, int]:
    """Mean per-frame PSNR of decode(encode(x)) over uint8 frames [N, H, W, 3]; returns (psnr, frames)."""
    values = []
    for start in tqdm(range(0, len(frames), batch_size), desc="psnr", disable=not progress, leave=False):
        x = to_pixels(frames[start : start + batch_size])
        values.append(frame_psnr(x, vq.decode(vq.encode(x))))
    return float(torch.cat(values).mean()), len(frames)


# ----------------------------------------------------------------------------------------------------------
# Training pieces
# ----------------------------------------------------------------------------------------------------------


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.lr_final_ratio at cfg.steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    final = cfg.lr * cfg.lr_final_ratio
    return final + (cfg.lr - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else nullcontext()


@torch.no_grad()
def kmeans_codebook(latents: torch.Tensor, k: int, gen: torch.Generator, iters: int = 20) -> torch.Tensor:
    """k-means (Lloyd) centres of latents [M, C], initialised from random rows; empty clusters get random rows."""
    m = latents.shape[0]
    pick = torch.randint(m, (k,), generator=gen) if m < k else torch.randperm(m, generator=gen)[:k]
    centres = latents[pick].clone()
    if m < k:  # not enough distinct vectors: jitter the duplicates
        centres += 1e-3 * latents.std() * torch.randn(centres.shape, generator=gen)
    for _ in range(iters):
        assign = nearest_rows(latents, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, latents)
        counts = torch.bincount(assign, minlength=k).to(latents.dtype)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            centres[empty] = latents[torch.randint(m, (int(empty.sum()),), generator=gen)]
    return centres


def init_codebook(model: VQModel, frames: torch.Tensor, n_frames: int, gen: torch.Generator, bf16: bool) -> None:
    """Set the codebook to k-means centres of the encoder's outputs on ``n_frames`` random full frames."""
    pick = torch.randperm(len(frames), generator=gen)[:n_frames]
    chunks = []
    with torch.no_grad(), _autocast(bf16):
        for part in pick.split(64):
            z = model.encode(to_pixels(frames[part]).contiguous(memory_format=torch.channels_last))
            chunks.append(z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    latents = torch.cat(chunks)
    model.quantize.embedding.weight.data.copy_(kmeans_codebook(latents, model.quantize.n_embed, gen))


def restart_dead_codes(model: VQModel, opt: torch.optim.Optimizer, usage: torch.Tensor, z: torch.Tensor, gen: torch.Generator) -> int:
    """Codes with zero usage move to random rows of the latest encoder outputs ``z`` [M, C]; returns how many."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    weight = model.quantize.embedding.weight
    src = z[torch.randint(z.shape[0], (len(dead),), generator=gen)]
    noise = 0.01 * z.std() * torch.randn(src.shape, generator=gen)
    with torch.no_grad():
        weight[dead] = (src + noise).to(weight.dtype)
    state = opt.state.get(weight, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][dead] = 0
    return len(dead)


def trainable_model(cfg: Config) -> VQModel:
    """A fresh taming VQModel of ``cfg.vqvae`` whose quantiser loss weighs the commitment by ``autoencoder.beta``."""
    model = build_model(cfg.vqvae, cfg.data.image_size)
    if not isinstance(model, VQModel):
        raise TrainError(f"only vqvae.arch=taming can be trained here (got {cfg.vqvae.arch})")
    model.quantize.beta = cfg.autoencoder.beta
    return model


def _training_signature(cfg: Config) -> dict[str, Any]:
    """The config entries that determine the trained model (compared on resume)."""
    ae = {k: v for k, v in dataclasses.asdict(cfg.autoencoder).items() if k not in _RESUME_NEUTRAL}
    vq = {k: v for k, v in dataclasses.asdict(cfg.vqvae).items() if k not in ("ckpt", "batch_size")}
    return {"autoencoder": ae, "vqvae": vq, "image_size": cfg.data.image_size, "data_root": cfg.data.root, "seed": cfg.seed}


def export_path(cfg: Config) -> Path:
    """Where the finished model goes: autoencoder.export, else ``<out_dir>/vqvae.pt`` — never silently over the
    config's (shipped) vqvae.ckpt: installing a retrained model there takes ``autoencoder.export=<vqvae.ckpt>``."""
    return Path(cfg.autoencoder.export or Path(cfg.autoencoder.out_dir) / "vqvae.pt")


def _export_matches(target: Path, signature: dict[str, Any]) -> bool:
    """True when ``target`` exists and its JSON record names this training signature and the file's sha256."""
    record = read_json(target.with_suffix(".json")) if target.exists() else None
    if not isinstance(record, dict) or record.get("signature") != json.loads(json.dumps(signature)):
        return False
    return record.get("summary", {}).get("sha256") == sha256_file(target)


def export_model(model: torch.nn.Module, path: Path, float16: bool) -> str:
    """Write the flat state dict (contiguous, optionally float16) atomically; returns its sha256."""
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().contiguous().clone()
        state[k] = v.half() if (float16 and v.is_floating_point()) else v
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return sha256_file(path)


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------


def train_autoencoder(
    cfg: Config,
    fresh: bool = False,
    until_step: int | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) the VQVAE of ``cfg.vqvae`` per ``cfg.autoencoder``; export it when all steps are done.

    ``until_step`` stops early after that many total steps (tests, manual interruption): a checkpoint is written,
    nothing is exported. Returns a summary (steps, seconds, val PSNR, export path and sha256).
    """
    ae, vcfg = cfg.autoencoder, cfg.vqvae
    if vcfg.arch != "taming":
        raise TrainError(f"only vqvae.arch=taming can be trained here (got {vcfg.arch})")
    size = cfg.data.image_size
    factor = 2 ** (len(vcfg.ch_mult) - 1)
    crop = ae.crop_size if 0 < ae.crop_size < size else 0
    if size % factor or crop % factor:
        raise TrainError(f"image_size {size} and crop_size {crop} must be multiples of the downsampling factor {factor}")
    threads_before = torch.get_num_threads()
    if ae.threads:
        torch.set_num_threads(ae.threads)
    try:
        return _train(cfg, fresh, until_step, log, progress)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: Config, fresh: bool, until_step: int | None, log: Callable[[str], None], progress: bool) -> dict[str, Any]:
    ae, vcfg = cfg.autoencoder, cfg.vqvae
    size = cfg.data.image_size
    crop = ae.crop_size if 0 < ae.crop_size < size else 0
    out_dir = Path(ae.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    latest = out_dir / LATEST
    target = export_path(cfg)
    signature = _training_signature(cfg)

    torch.manual_seed(cfg.seed)
    model = trainable_model(cfg).to(memory_format=torch.channels_last)
    codebook = model.quantize.embedding.weight
    others = [p for n, p in model.named_parameters() if p is not codebook]
    opt = torch.optim.AdamW(
        [{"params": others, "weight_decay": ae.weight_decay}, {"params": [codebook], "weight_decay": 0.0}],
        lr=ae.lr, betas=(0.9, 0.99),
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    usage = torch.zeros(vcfg.n_embed, dtype=torch.long)
    step, elapsed, restarted = 0, 0.0, 0

    if latest.exists() and not fresh:
        state = safe_torch_load(latest)
        if state.get("signature") != json.loads(json.dumps(signature)):
            raise TrainError(
                f"{latest} was written by a different training configuration; rerun with --fresh to start over "
                f"(or point autoencoder.out_dir elsewhere)"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        usage = state["usage"]
        step, elapsed, restarted = int(state["step"]), float(state["elapsed"]), int(state["restarted"])
        if step < ae.steps:
            log(f"resuming from {latest} at step {step}/{ae.steps}")

    def save_checkpoint() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "restarted": restarted,
            "usage": usage,
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "signature": signature,
            "config": cfg.to_dict(),
        }
        with atomic_path(latest) as tmp:
            torch.save(state, tmp)

    if step >= ae.steps and target.exists():
        log(f"up to date: {latest} finished all {ae.steps} steps and {target} exists (use --fresh to retrain)")
        return {"steps": step, "seconds": elapsed, "export": str(target), "up_to_date": True}
    if step == 0 and not fresh and _export_matches(target, signature):
        log(f"up to date: {target} was trained with this configuration (its record says so; --fresh retrains)")
        return {"steps": ae.steps, "export": str(target), "up_to_date": True}

    t0 = time.time()
    frames = load_split_frames(cfg.data.root, "train", size, ae.frame_stride)
    log(f"training frames: {len(frames)} from {cfg.data.root}/train ({time.time() - t0:.1f} s to load)")
    stop_at = ae.steps if until_step is None else min(ae.steps, until_step)
    run_start = time.time() - elapsed  # elapsed counts every run of this training, data loading included
    bar = tqdm(total=ae.steps, initial=step, desc="autoencoder", disable=not progress, dynamic_ncols=True)
    stats: dict[str, float] = {}
    model.train()
    while step < stop_at:
        if ae.max_minutes and time.time() - run_start > 60 * ae.max_minutes:
            warnings.warn(f"autoencoder: max_minutes={ae.max_minutes} reached at step {step}/{ae.steps}; stopping early")
            break
        quantize = step >= ae.quantize_after
        if step == ae.quantize_after:
            model.eval()
            init_codebook(model, frames, ae.kmeans_frames, gen, ae.bf16)
            model.train()
            usage.zero_()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, ae)
        full = step >= ae.steps - ae.full_frame_steps
        x = sample_batch(frames, ae.batch_size, 0 if full else crop, ae.flip, gen, ae.crop_candidates).contiguous(memory_format=torch.channels_last)
        with _autocast(ae.bf16):
            z = model.encode(x)
        z = z.float()
        if quantize:
            z_q, q_loss, idx = model.quantize(z)
            usage += torch.bincount(idx.flatten(), minlength=vcfg.n_embed)
        else:
            z_q, q_loss = z, z.new_zeros(())
        with _autocast(ae.bf16):
            y = model.decode_quantized(z_q)
        y = y.float()
        rec = reconstruction_loss(x, y, ae)
        loss = rec + q_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if quantize and ae.restart_every and (step - ae.quantize_after) % ae.restart_every == 0:
            flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            restarted += restart_dead_codes(model, opt, usage, flat, gen)
            stats["used"] = float((usage > 0).sum())
            usage.zero_()
        with torch.no_grad():
            batch_psnr = float(frame_psnr(x, y.clamp(-1, 1)).mean())
            stats["psnr"] = batch_psnr if "psnr" not in stats else 0.9 * stats["psnr"] + 0.1 * batch_psnr
            stats["rec"], stats["q"] = float(rec), float(q_loss)
        elapsed = time.time() - run_start
        bar.update(1)
        if step % ae.log_every == 0 or step == stop_at:
            bar.set_postfix(rec=f"{stats['rec']:.4f}", q=f"{stats['q']:.4f}", psnr=f"{stats['psnr']:.1f}",
                            codes=int(stats.get("used", 0)), restarts=restarted, lr=f"{lr_at(step - 1, ae):.1e}")
        if step % ae.checkpoint_every == 0 and step < stop_at:
            save_checkpoint()
    bar.close()
    elapsed = time.time() - run_start
    save_checkpoint()
    summary: dict[str, Any] = {"steps": step, "seconds": round(elapsed, 1), "restarted_codes": restarted}
    if step < ae.steps:
        log(f"stopped at step {step}/{ae.steps} after {elapsed:.0f} s; checkpoint {latest} (rerun to resume)")
        if until_step is not None:
            return summary

    model.eval()
    sha = export_model(model, target, ae.export_float16)
    summary.update(export=str(target), sha256=sha, size_bytes=target.stat().st_size)
    if ae.val_videos and "val" in cfg.data.splits and (Path(cfg.data.root) / "val").is_dir():
        vq = build_vqvae(dataclasses.replace(vcfg, ckpt=str(target)), size)  # measure the exported file itself
        val = load_split_frames(cfg.data.root, "val", size, 1, ae.val_videos)
        summary["val_psnr"], summary["val_frames"] = reconstruction_psnr(vq, val)
        summary["val_psnr"] = round(summary["val_psnr"], 3)
    record = {
        "what": "demo VQVAE trained by pipeline.demo.vqvae_train",
        "code_version": code_version(),
        "summary": summary,
        "signature": signature,
        "config": cfg.to_dict(),
    }
    write_json_atomic(target.with_suffix(".json"), record)
    write_json_atomic(out_dir / "record.json", record)
    log(
        f"trained {step} steps in {elapsed / 60:.1f} min; wrote {target} ({summary['size_bytes'] / 1e6:.1f} MB, "
        f"sha256 {sha[:12]}); val PSNR {summary.get('val_psnr', float('nan')):.2f} dB"
    )
    return summary


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=False)


@app.callback(invoke_without_command=True)
def train_cli(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (configs/<dataset>.yaml).")] = None,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    data_root: DataRootOption = None,
    fresh: Annotated[bool, typer.Option(help="Ignore <out_dir>/latest.pt and train from scratch.")] = False,
) -> None:
    """Train the autoencoder (resuming <autoencoder.out_dir>/latest.pt) and export it to autoencoder.export
    (default <autoencoder.out_dir>/vqvae.pt; the config's vqvae.ckpt is overwritten only when export names it)."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        fail("--config is required")
    cfg = load_cli_config(config, set_, smoke, data_root)
    try:
        train_autoencoder(cfg, fresh=fresh)
    except (TrainError, ShardError) as exc:
        fail(str(exc))


@app.command()
def psnr(
    config: ConfigOption,
    set_: SetOption = None,
    smoke: SmokeOption = False,
    data_root: DataRootOption = None,
    ckpt: Annotated[Optional[Path], typer.Option(help="Checkpoint to evaluate (default: vqvae.ckpt of the config).")] = None,
    trained: Annotated[bool, typer.Option("--trained", help="Evaluate the autoencoder trainer's export (autoencoder.export) instead.")] = False,
    split: Annotated[Optional[str], typer.Option(help="Split (default: autoencoder.eval_split).")] = None,
    videos: Annotated[Optional[int], typer.Option(help="Use the first N videos (default: autoencoder.eval_videos; 0 = all).")] = None,
) -> None:
    """Print the mean per-frame reconstruction PSNR, 10 log10(4 / MSE) on [-1, 1], of decode(encode(x)); on demo
    data (a split with its state sidecar) also how well the sprites survive (found in their colour, position error,
    PSNR on sprite pixels)."""
    cfg = load_cli_config(config, set_, smoke, data_root)
    ckpt = ckpt or (export_path(cfg) if trained else None)
    vcfg = dataclasses.replace(cfg.vqvae, ckpt=str(ckpt)) if ckpt else cfg.vqvae
    split = split or cfg.autoencoder.eval_split
    videos = cfg.autoencoder.eval_videos if videos is None else videos
    if cfg.autoencoder.threads:
        torch.set_num_threads(cfg.autoencoder.threads)
    try:
        vq = build_vqvae(vcfg, cfg.data.image_size)
        frames = load_split_frames(cfg.data.root, split, cfg.data.image_size, 1, videos)
    except (ShardError, RuntimeError, ValueError) as exc:
        fail(str(exc))
    t0 = time.time()
    value, count = reconstruction_psnr(vq, frames, batch_size=vcfg.batch_size, progress=True)
    typer.echo(
        f"PSNR {value:.2f} dB  ({count} frames of {cfg.data.root}/{split}, checkpoint {vq.ckpt}, "
        f"{time.time() - t0:.0f} s)"
    )
    if (Path(cfg.data.root) / split / STATE_FILE).is_file():
        typer.echo(object_fidelity_line(vq, Path(cfg.data.root) / split, videos))


def object_fidelity_line(vq: FrozenVQVAE, split_dir: Path, videos: int) -> str:
    """The demo's sprites in a VQVAE's reconstructions (every 4th frame; pipeline.demo.known_law.decoder_fidelity),
    in one line: found in their own colours, position error against the exact frames' read-out, sprite PSNR."""
    from pipeline.demo import known_law
    from pipeline.demo.state import load_state

    reader = ShardReader(split_dir)
    try:
        fid = known_law.decoder_fidelity(vq.reconstruct_uint8, reader, load_state(split_dir), videos)
    finally:
        reader.close()
    own = {k: (float("nan") if v is None else v) for k, v in fid["palette_colours"].items()}  # None: no sprite found
    return (f"sprites: {100 * own['found_rate']:.1f} % found in their own colour, position error RMS "
            f"{own['rms_vs_exact']:.2f} px (median {own['median_vs_exact']:.2f}, 90th pct {own['p90_vs_exact']:.2f}), "
            f"spurious objects in {100 * own['spurious_rate']:.1f} % of frames; PSNR on sprite pixels "
            f"{fid['psnr_sprite_pixels']:.2f} dB  ({fid['frames']} frames of {fid['videos']} videos)")


if __name__ == "__main__":
    app()

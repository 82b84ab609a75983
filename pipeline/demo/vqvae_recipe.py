"""The demo VQVAE's training recipe, piece by piece: frames and crops, the (object-weighted) reconstruction loss,
PSNR, the learning-rate schedule, and the codebook's k-means start and dead-code restarts."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.data.shards import ShardReader
from pipeline.run.config import AutoencoderConfig, Config
from pipeline.vqvae import FrozenVQVAE, build_model
from pipeline.vqvae.taming import VQModel, nearest_rows

FOREGROUND_TOL = 0.1  # a pixel is foreground when a channel differs from its frame's median by more ([-1, 1] units)
FOREGROUND_RADIUS = 2  # and the foreground is dilated by this many pixels (the objects' rims)


class TrainError(RuntimeError):
    """Training cannot start or resume (bad data, a checkpoint from a different configuration)."""


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
    """Random frames as float32 [B, 3, s, s] in [-1, 1]: random crops of side ``crop`` if > 0 (the most varied of
    ``candidates``, so fewer flat background crops), random flips."""
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
    """Per-pixel loss weights [B, 1, H, W]: 1 + ``weight`` within ``radius`` of a pixel more than ``tol`` from its
    frame's median colour, else 1. Small objects would otherwise leave the loss to the background."""
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


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.lr_final_ratio at cfg.steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    final = cfg.lr * cfg.lr_final_ratio
    return final + (cfg.lr - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def autocast(enabled: bool):
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
    with torch.no_grad(), autocast(bf16):
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

"""Frozen VQVAEs between pixels and the flow's latent space (docs/METHOD.md §2): ``taming`` (KTH f8 VQModel, also
the demo's at a smaller width) and ``river`` (CLEVRER).

    vq = build_vqvae(cfg.vqvae, cfg.data.image_size)   # loads cfg.vqvae.ckpt strictly
    z = vq.encode(frames)          # [N, 3, H, W] in [-1, 1] -> continuous pre-quantisation latents [N, C, h, w]
    x = vq.decode(z)               # nearest-codebook quantisation -> decoder -> [N, 3, H, W] in [-1, 1]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from pipeline.run.config import VQVAEConfig
from pipeline.data.clips import to_model_range, to_uint8
from pipeline.run.records import sha256_file

from .load import CheckpointFormatError, CheckpointMismatchError, load_checkpoint_into
from .river import RiverVQVAE
from .taming import VQModel

__all__ = [
    "FrozenVQVAE",
    "build_vqvae",
    "build_model",
    "checkpoint_sha256",
    "CheckpointMismatchError",
    "CheckpointFormatError",
]


def build_model(cfg: VQVAEConfig, image_size: int) -> nn.Module:
    """A freshly initialised (trainable) model of the configured architecture for ``image_size`` px frames."""
    if cfg.arch == "taming":
        return VQModel(
            ch=cfg.ch,
            ch_mult=cfg.ch_mult,
            num_res_blocks=cfg.num_res_blocks,
            attn_resolutions=cfg.attn_resolutions,
            z_channels=cfg.z_channels,
            embed_dim=cfg.embed_dim,
            n_embed=cfg.n_embed,
            resolution=image_size,
            dropout=cfg.dropout,
        )
    if cfg.arch == "river":
        return RiverVQVAE()
    raise ValueError(f"unknown VQVAE arch {cfg.arch!r} (expected taming or river)")


def checkpoint_sha256(path: str | Path) -> str:
    """Hex sha256 of a checkpoint file (part of every latent cache's fingerprint)."""
    return sha256_file(path)


class FrozenVQVAE(nn.Module):
    """Inference-only wrapper: eval mode forever, no gradients, chunked encode/decode."""

    def __init__(self, model: nn.Module, cfg: VQVAEConfig, image_size: int, ckpt: str | None):
        super().__init__()
        self.model = model
        self.arch = cfg.arch
        self.image_size = image_size
        self.batch_size = cfg.batch_size
        self.ckpt = ckpt
        self._cfg = cfg
        self._sha256: str | None = None
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    # nn.Module.train() would switch RIVER's BatchNorm to batch statistics: refuse to leave eval mode.
    def train(self, mode: bool = True) -> "FrozenVQVAE":
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def downsample_factor(self) -> int:
        return int(self.model.downsample_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.model.embed_dim)

    def latent_shape(self, image_size: int | None = None) -> tuple[int, int, int]:
        """(C, h, w) of one frame's latent: (4, 8, 8) for 64 px taming f8, (4, 16, 16) for 128 px RIVER."""
        size = self.image_size if image_size is None else image_size
        f = self.downsample_factor
        if size % f:
            raise ValueError(f"image size {size} is not a multiple of the VQVAE's downsampling factor {f}")
        return (self.latent_channels, size // f, size // f)

    def checkpoint_sha256(self) -> str | None:
        """sha256 of the loaded checkpoint file (computed once), None for an untrained model."""
        if self.ckpt is None:
            return None
        if self._sha256 is None:
            self._sha256 = checkpoint_sha256(self.ckpt)
        return self._sha256

    def describe(self) -> dict[str, Any]:
        """What determines the latents: architecture, sizes and checkpoint hash (for cache fingerprints)."""
        out: dict[str, Any] = {"arch": self.arch, "image_size": self.image_size, "latent_shape": list(self.latent_shape())}
        if self.arch == "taming":
            c = self._cfg
            out.update(ch=c.ch, ch_mult=list(c.ch_mult), num_res_blocks=c.num_res_blocks,
                       attn_resolutions=list(c.attn_resolutions), z_channels=c.z_channels,
                       embed_dim=c.embed_dim, n_embed=c.n_embed)
        out["ckpt"] = self.ckpt
        out["ckpt_sha256"] = self.checkpoint_sha256()
        return out

    def _check_pixels(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"encode expects pixels [N, 3, H, W], got {list(x.shape)}")
        f = self.downsample_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"frame size {list(x.shape[2:])} is not a multiple of {f}")

    def drop_encoder(self) -> "FrozenVQVAE":
        """Free the encoder: for stages that only decode (training's sample videos, forecasting from the cache)."""
        self.model.encoder = None
        return self

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [N, 3, H, W] in [-1, 1] -> pre-quantisation latents [N, C, H/f, W/f] float32, on the input's device."""
        if self.model.encoder is None:
            raise RuntimeError("this VQVAE was loaded for decoding only (drop_encoder): it cannot encode")
        self._check_pixels(pixels)
        out = [
            self.model.encode(chunk.to(self.device, torch.float32)).to(pixels.device)
            for chunk in pixels.split(self.batch_size)
        ]
        if not out:
            return pixels.new_zeros((0, *self.latent_shape(pixels.shape[-1])), dtype=torch.float32)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [N, C, h, w] -> pixels [N, 3, h*f, w*f] in [-1, 1] (nearest-code quantisation first)."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"decode expects latents [N, {self.latent_channels}, h, w], got {list(latents.shape)}")
        out = [
            self.model.decode(chunk.to(self.device, torch.float32)).clamp_(-1.0, 1.0).to(latents.device)
            for chunk in latents.split(self.batch_size)
        ]
        if not out:
            f = self.downsample_factor
            return latents.new_zeros((0, 3, latents.shape[2] * f, latents.shape[3] * f), dtype=torch.float32)
        return torch.cat(out)

    def encode_clip(self, clip: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> [B, T, C, h, w] (frames encoded as one flat batch)."""
        b = clip.shape[0]
        z = self.encode(rearrange(clip, "b t c h w -> (b t) c h w"))
        return rearrange(z, "(b t) c h w -> b t c h w", b=b)

    def decode_clip(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, T, C, h, w] -> [B, T, 3, H, W]."""
        b = latents.shape[0]
        x = self.decode(rearrange(latents, "b t c h w -> (b t) c h w"))
        return rearrange(x, "(b t) c h w -> b t c h w", b=b)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Reconstruction decode(encode(x)): the achievable ceiling for any forecast."""
        return self.decode(self.encode(pixels))

    def reconstruct_uint8(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames [N, H, W, 3] -> their reconstructions, uint8 [N, H, W, 3] (rounded)."""
        return to_uint8(self(to_model_range(frames)))


def build_vqvae(cfg: VQVAEConfig, image_size: int, load_weights: bool = True) -> FrozenVQVAE:
    """The frozen VQVAE of ``cfg`` for ``image_size`` px frames; ``load_weights`` loads ``cfg.ckpt`` strictly
    (CheckpointMismatchError), else the weights stay random."""
    model = build_model(cfg, image_size)
    ckpt = None
    if load_weights:
        if not cfg.ckpt:
            raise ValueError("vqvae.ckpt is empty: set the VQVAE checkpoint path in the config (or --set vqvae.ckpt=...)")
        load_checkpoint_into(model, cfg.ckpt)
        ckpt = str(cfg.ckpt)
    return FrozenVQVAE(model, cfg, image_size, ckpt)

"""RIVER's CLEVRER VQVAE (docs/METHOD.md §2.3) with the reference's tensor names: 128 px -> 4 x 16 x 16 latents,
codebook 8192 x 4. The decoder's BatchNorm2d layers need ``eval()`` at inference (running stats in the checkpoint).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .taming import nearest_code


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResidualBlock(nn.Module):
    """conv3x3 -> avgpool(f) -> GN -> LeakyReLU(0.2) -> conv3x3 -> GN, + shortcut, LeakyReLU(0.2). ``bn1``/``bn2``
    are GroupNorms (reference names); ``downsample`` (conv1x1 -> avgpool -> GN) when width or resolution change."""

    def __init__(self, in_channels: int, out_channels: int, factor: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.AvgPool2d(factor) if factor != 1 else nn.Identity()
        self.bn1 = _gn(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _gn(out_channels)
        if factor != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.AvgPool2d(factor) if factor != 1 else nn.Identity(),
                _gn(out_channels),
            )
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.bn1(self.pool(self.conv1(x))), 0.2)
        h = self.bn2(self.conv2(h))
        skip = x if self.downsample is None else self.downsample(x)
        return F.leaky_relu(h + skip, 0.2)


class UpBlock(nn.Module):
    """Nearest x2 -> conv3x3 (no bias) -> BatchNorm2d -> LeakyReLU(0.2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


class _AttentionCore(nn.Module):
    """pre_attn_residual -> x + MHA(GN(x)) over h*w tokens -> post_attn_residual (shared by both halves)."""

    def _build_core(self, channels: int) -> None:
        self.pre_attn_residual = ResidualBlock(channels, channels)
        self.attn_norm = _gn(channels)
        self.attn = nn.MultiheadAttention(channels, num_heads=1, batch_first=True)
        self.post_attn_residual = ResidualBlock(channels, channels)

    def _core(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_attn_residual(x)
        n, c, h, w = x.shape
        tokens = self.attn_norm(x).flatten(2).transpose(1, 2)  # [N, h*w, C]
        attended, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        x = x + attended.transpose(1, 2).reshape(n, c, h, w)
        return self.post_attn_residual(x)


class Encoder(_AttentionCore):
    """[N, 3, 128, 128] -> [N, 4, 16, 16]: conv_in, three stride-2 residual stages 32->64->128->256, attention."""

    def __init__(self, in_channels: int = 3, out_channels: int = 4, mid_channels: int = 32, levels: int = 3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        widths = [mid_channels * 2**i for i in range(levels + 1)]
        self.residuals = nn.ModuleList(ResidualBlock(widths[i], widths[i + 1], factor=2) for i in range(levels))
        top = widths[-1]
        self._build_core(top)
        self.out_norm = _gn(top)
        self.out_conv = nn.Conv2d(top, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.residuals:
            x = block(x)
        x = self._core(x)
        return self.out_conv(F.silu(self.out_norm(x)))


class Decoder(_AttentionCore):
    """[N, 4, 16, 16] -> [N, 3, 128, 128] in (-1, 1): conv_in, attention, three (residual c->c/2, UpBlock) stages."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, mid_channels: int = 256, levels: int = 3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self._build_core(mid_channels)
        widths = [mid_channels // 2**i for i in range(levels + 1)]
        self.residuals = nn.ModuleList(
            nn.Sequential(ResidualBlock(widths[i], widths[i + 1]), UpBlock(widths[i + 1])) for i in range(levels)
        )
        self.out_norm = _gn(widths[-1])
        self.out_conv = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self._core(self.conv_in(z))
        for stage in self.residuals:
            x = stage(x)
        return torch.tanh(self.out_conv(F.silu(self.out_norm(x))))


class VectorQuantizer(nn.Module):
    """Codebook ``embedding`` [n_embed, dim]; nearest entry by squared L2; straight-through; beta = 0.25."""

    def __init__(self, n_embed: int = 8192, embed_dim: int = 4, beta: float = 0.25):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        idx = nearest_code(z, self.embedding.weight)
        return self.embedding(idx).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_q = self.quantize(z)
        loss = self.beta * F.mse_loss(z, z_q.detach()) + F.mse_loss(z_q, z.detach())
        return z + (z_q - z).detach(), loss


class RiverVQVAE(nn.Module):
    """Attributes ``encoder``, ``decoder``, ``vector_quantizer`` (state_dict order as the reference)."""

    downsample_factor = 8
    embed_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder(3, 4, mid_channels=32)
        self.decoder = Decoder(4, 3, mid_channels=256)
        self.vector_quantizer = VectorQuantizer(8192, 4, beta=0.25)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantisation latents (the reference's ``latents`` field)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-codebook quantisation -> decoder (tanh output)."""
        return self.decoder(self.vector_quantizer.quantize(z))

"""The taming-transformers / LDM "f8" VQModel (docs/METHOD.md §2.2): no discriminator, no LPIPS. Parameter names,
shapes and order match the reference, so a published checkpoint loads strictly
(tests/fixtures/vqvae_kth_taming_f8_keys.json). KTH: 64 px -> 4 x 8 x 8 latents, codebook 16384 x 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3x3 -> GN -> swish -> dropout -> conv3x3, plus a 1x1 ``nin_shortcut`` if widths differ."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections ``q``, ``k``, ``v``, ``proj_out``; residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        # [N, 1 head, h*w tokens, C]; softmax(q k^T / sqrt(C)) v, identical to the reference's bmm formulation.
        q, k, v = (proj(y).reshape(n, 1, c, h * w).transpose(2, 3) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(2, 3).reshape(n, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one pixel, then a stride-2 3x3 conv without padding (halves the side)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (maybe empty), then ``downsample``/``upsample``."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Pixels [N, in_channels, R, R] -> [N, z_channels, R / 2^(levels-1), same]."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        in_channels: int,
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1, *ch_mult)
        res = resolution
        self.down = nn.ModuleList()
        block_out = ch
        for level, mult in enumerate(ch_mult):
            stage = _Level()
            block_in, block_out = ch * in_mult[level], ch * mult
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(block_in)
                res //= 2
            self.down.append(stage)
        self.mid = _Mid(block_out, dropout)
        self.norm_out = _norm(block_out)
        self.conv_out = nn.Conv2d(block_out, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage.run_blocks(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents [N, z_channels, r, r] -> pixels [N, out_ch, r * 2^(levels-1), same]; no output activation.
    ``up`` is indexed by level (0 = finest) but runs coarse to fine, as in the reference."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        out_ch: int,
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout)
        stages: list[_Level] = []
        for level in reversed(range(len(ch_mult))):
            stage = _Level()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            h = stage.run_blocks(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Codebook ``embedding`` [n_embed, dim]; nearest entry by squared L2; straight-through gradient.

    The training loss is the standard VQ-VAE form (van den Oord et al. 2017; taming's ``legacy=False``),
    ||z_q - sg[z]||^2 + beta ||sg[z_q] - z||^2 (means). Taming's default ``legacy=True`` (likely what trained RIVER's
    KTH VQVAE) puts beta on the codebook term: same value, 1/beta times the encoder gradient. Inference is unaffected.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codebook index per position: z [N, C, h, w] -> [N, h, w] (int64)."""
        return nearest_code(z, self.embedding.weight)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Indices [N, h, w] -> codebook vectors [N, C, h, w]."""
        return self.embedding(idx).permute(0, 3, 1, 2).contiguous()

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Snap each position of z [N, C, h, w] to its nearest codebook vector (no gradient bookkeeping)."""
        return self.lookup(self.indices(z))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (straight-through z_q, codebook + beta * commitment loss (the standard form), indices)."""
        idx = self.indices(z)
        z_q = self.lookup(idx)
        loss = self.beta * F.mse_loss(z, z_q.detach()) + F.mse_loss(z_q, z.detach())  # commitment, codebook
        z_q = z + (z_q - z).detach()
        return z_q, loss, idx


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """argmin_k ||z[:, :, i, j] - codebook[k]||^2 for z [N, C, h, w], codebook [K, C] -> [N, h, w] int64 (float32,
    ``chunk`` positions at a time to bound memory)."""
    n, c, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, c)
    return nearest_rows(flat, codebook, chunk).reshape(n, h, w)


def nearest_rows(flat: torch.Tensor, codebook: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Index of the nearest codebook row for each row of ``flat`` [M, C] -> [M] int64 (float32, no autocast)."""
    with torch.autocast(device_type=flat.device.type, enabled=False):
        flat, book = flat.detach().float(), codebook.detach().float()
        book_sq = (book * book).sum(1)
        out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        for start in range(0, flat.shape[0], chunk):
            part = flat[start : start + chunk]
            # ||z||^2 is constant per row and does not change the argmin.
            dist = book_sq[None, :] - 2.0 * part @ book.t()
            out[start : start + chunk] = dist.argmin(dim=1)
    return out


class VQModel(nn.Module):
    """encoder -> quant_conv -> [quantize] -> post_quant_conv -> decoder (attribute order = state_dict order)."""

    def __init__(
        self,
        *,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        z_channels: int = 4,
        embed_dim: int = 4,
        n_embed: int = 16384,
        resolution: int = 64,
        in_channels: int = 3,
        out_ch: int = 3,
        dropout: float = 0.0,
        beta: float = 0.25,
    ):
        super().__init__()
        common = dict(
            ch=ch,
            ch_mult=tuple(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=tuple(attn_resolutions),
            resolution=resolution,
            z_channels=z_channels,
            dropout=dropout,
        )
        self.encoder = Encoder(in_channels=in_channels, **common)
        self.decoder = Decoder(out_ch=out_ch, **common)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=beta)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantisation latents (encoder -> quant_conv)."""
        return self.quant_conv(self.encoder(x))

    def decode_quantized(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-codebook quantisation -> post_quant_conv -> decoder (unbounded output)."""
        return self.decode_quantized(self.quantize.quantize(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, quantiser loss, code indices), straight-through gradients."""
        z = self.encode(x)
        z_q, q_loss, idx = self.quantize(z)
        return self.decode_quantized(z_q), q_loss, idx

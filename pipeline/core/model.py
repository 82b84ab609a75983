"""RIVER's VectorFieldRegressor: the flow network f(z, t, ref, context, gap) (docs/METHOD.md §4.2).

A U-shaped pre-norm transformer over one time token (sinusoid of 200 t) and the h*w latent cells
(Linear(3C -> dim) of [z, ref, context] + learned 2-D position + MLP of log(gap)): ``depth`` input layers (outputs
kept), ``mid_depth`` middle layers, ``depth`` output layers each fed Linear(2 dim -> dim)(concat[skip, x]), skips
in reverse; head Linear -> GELU -> LayerNorm -> [B, dim, h, w] -> Conv2d(dim -> C, 3x3). Parameter names, shapes
and order match the reference checkpoints (tests/fixtures/flow_vector_field_regressor_keys.json).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pipeline.run.config import ModelConfig

TIME_SCALE = 200.0  # the time token embeds 200 t (reference constant)


class _Tokens(nn.Module):
    """[B, C, h, w] -> [B, h*w, C], row-major (y outer, x inner). No parameters (index 0 of ``project_in``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)


class _Grid(nn.Module):
    """[B, h*w, D] -> [B, D, h, w], row-major. No parameters (index 3 of ``project_out``)."""

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class PositionEmbedding2D(nn.Module):
    """Learned 2-D positions: cell (y, x) -> concat(col_embed[x], row_embed[y]), tables init U(-1, 1)."""

    def __init__(self, max_positions: int, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"position embedding width must be even, got {dim}")
        self.row_embed = nn.Embedding(max_positions, dim // 2)
        self.col_embed = nn.Embedding(max_positions, dim // 2)
        nn.init.uniform_(self.row_embed.weight, -1.0, 1.0)
        nn.init.uniform_(self.col_embed.weight, -1.0, 1.0)

    def forward(self, h: int, w: int) -> Tensor:
        """[1, h*w, dim], row-major like :class:`_Tokens`."""
        n = self.row_embed.num_embeddings
        if h > n or w > n:
            raise ValueError(f"latent grid {h}x{w} exceeds the {n} positions of the embedding tables")
        cols = self.col_embed.weight[:w]  # [w, dim/2]
        rows = self.row_embed.weight[:h]  # [h, dim/2]
        grid = torch.cat([cols.unsqueeze(0).expand(h, w, -1), rows.unsqueeze(1).expand(h, w, -1)], dim=-1)
        return grid.reshape(1, h * w, -1)


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal time token [B, dim]: a_k = 200 t 10000^(-k/(dim/2)), output [cos a, sin a] (cos half first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = TIME_SCALE * t.float().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def _layer(cfg: ModelConfig) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        d_model=cfg.inner_dim, nhead=cfg.heads, dim_feedforward=cfg.ffn_mult * cfg.inner_dim, dropout=cfg.dropout,
        activation="gelu", batch_first=True, norm_first=True,
    )


class VectorFieldRegressor(nn.Module):
    """f(z, t, ref, context, gap) -> [B, C, h, w]: the drift / velocity estimate at I_t = z (docs/METHOD.md §4.2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        dim, c = cfg.inner_dim, cfg.state_size
        # Registration order = state_dict order of the reference checkpoints.
        self.position_encoding = PositionEmbedding2D(cfg.max_positions, dim)
        self.project_in = nn.Sequential(_Tokens(), nn.Linear(3 * c, dim))
        self.time_projection = nn.Sequential(  # the gap MLP (reference name)
            nn.Linear(1, cfg.gap_hidden), nn.ReLU(), nn.Linear(cfg.gap_hidden, dim)
        )
        self.in_blocks = nn.ModuleList([_layer(cfg) for _ in range(cfg.depth)])
        self.mid_blocks = nn.ModuleList([_layer(cfg) for _ in range(cfg.mid_depth)])
        self.out_blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(2 * dim, dim), _layer(cfg)) for _ in range(cfg.depth)]
        )
        self.project_out = nn.ModuleList(  # applied in order; index 3 (the reshape) needs h, w
            [nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim), _Grid(), nn.Conv2d(dim, c, kernel_size=3, padding=1)]
        )

    def forward(self, z: Tensor, t: Tensor, ref: Tensor, context: Tensor, gap: Tensor) -> Tensor:
        """z, ref, context: [B, C, h, w]; t: [B] in [0, 1]; gap: [B] frames between reference and context (>= 1)."""
        b, c, h, w = z.shape
        if ref.shape != z.shape or context.shape != z.shape:
            raise ValueError(f"z {list(z.shape)}, ref {list(ref.shape)}, context {list(context.shape)} must match")
        if c != self.cfg.state_size or [h, w] != list(self.cfg.state_res):
            raise ValueError(
                f"latents are {c}x{h}x{w}, the model was built for {self.cfg.state_size}x"
                f"{self.cfg.state_res[0]}x{self.cfg.state_res[1]} (model.state_size / model.state_res)"
            )
        t = t.reshape(-1) if t.ndim else t.expand(b)
        gap = gap.reshape(-1) if gap.ndim else gap.expand(b)
        if t.shape[0] != b or gap.shape[0] != b:
            raise ValueError(f"t {list(t.shape)} and gap {list(gap.shape)} must have one entry per example (B={b})")
        if not bool((gap >= 1).all()):  # log(gap) is the gap feature: gap >= 1 by construction (docs/METHOD.md §9.16)
            raise ValueError(f"gap must be >= 1 (frames between reference and context), got min {gap.min().item()}")

        x = self.project_in(torch.cat([z, ref, context], dim=1))  # [B, hw, D]
        x = x + self.position_encoding(h, w).to(x.dtype)
        x = x + self.time_projection(gap.to(x.dtype).log().unsqueeze(1)).unsqueeze(1)
        x = torch.cat([time_embedding(t, x.shape[-1]).to(x.dtype).unsqueeze(1), x], dim=1)  # [B, 1 + hw, D]

        skips = []
        for layer in self.in_blocks:
            x = layer(x)
            skips.append(x)
        for layer in self.mid_blocks:
            x = layer(x)
        for block in self.out_blocks:
            proj, layer = block
            x = layer(proj(torch.cat([skips.pop(), x], dim=-1)))

        linear, act, norm, grid, conv = self.project_out
        return conv(grid(norm(act(linear(x[:, 1:]))), h, w))  # time token dropped


def build_model(cfg: ModelConfig) -> VectorFieldRegressor:
    """The flow network for ``cfg`` (default initialisation, PyTorch's except the U(-1, 1) position tables)."""
    return VectorFieldRegressor(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

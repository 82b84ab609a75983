"""FVD's feature network: DeepMind's Kinetics-400 I3D (TF-hub ``i3d-kinetics-400``) in PyTorch.

Inception-v1 inflated to 3-D (Carreira & Zisserman 2017); its 400 time-averaged logits are the FVD features. Called
as StyleGAN-V's detector, ``(x, rescale=False, resize=True, return_features=True)`` on float32 ``[B, 3, T, H, W]``
in [-1, 1]. Matching TF (tests/test_i3d.py: logits within 1e-3 of the JAX port) needs: explicit "SAME" padding with
the odd element after (zeros for convolutions, -inf for max-pools), BatchNorm without scale (eps 1e-3, moving
statistics only), branches concatenated 0..3, TF kernels ``(T, H, W, in, out)`` transposed to ``(out, in, T, H, W)``.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 400
INPUT_SIZE = 224
BN_EPSILON = 1e-3

def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding of one dimension: (before, after), the odd extra element after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pads(shape: Iterable[int], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[tuple[int, int]]:
    return [same_padding(n, k, s) for n, k, s in zip(shape, kernel, stride)]


def _f_pad(pads: list[tuple[int, int]]) -> tuple[int, ...]:
    """Per-dimension (before, after) pads of (T, H, W) in F.pad's order (last dimension first)."""
    return tuple(p for before_after in reversed(pads) for p in before_after)


class BatchNormNoScale(nn.Module):
    """TF/Sonnet BatchNorm without scale, in inference: ``(x - running_mean) / sqrt(running_var + eps) + bias``."""

    def __init__(self, channels: int, eps: float = BN_EPSILON):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))  # TF's beta
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps)


class Unit3D(nn.Module):
    """Conv3d with TF "SAME" padding, BatchNorm without scale, ReLU (the logits: conv + bias only).
    ``tf_name`` is the unit's name in the TF/Flax weights."""

    def __init__(self, tf_name: str, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), batch_norm: bool = True, relu: bool = True,
                 bias: bool = False):
        super().__init__()
        self.tf_name = tf_name
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = BatchNormNoScale(out_channels) if batch_norm else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x.shape[2:], self.kernel, self.stride)
        if all(before == after for before, after in pads):  # symmetric: the convolution's own zero padding
            x = F.conv3d(x, self.conv.weight, self.conv.bias, self.stride, tuple(before for before, _ in pads))
        else:
            x = F.conv3d(F.pad(x, _f_pad(pads)), self.conv.weight, self.conv.bias, self.stride)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "SAME" padding (-inf pads), separably: the running maximum of the ``k`` strided shifts per
    dimension equals ``F.max_pool3d`` exactly and is several times faster on CPU."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x.shape[2:], self.kernel, self.stride)
        if any(p for before_after in pads for p in before_after):
            x = F.pad(x, _f_pad(pads), value=float("-inf"))
        for dim, k, s in zip((2, 3, 4), self.kernel, self.stride):
            if k == 1 and s == 1:
                continue
            span = (x.size(dim) - k) // s * s + 1  # input positions covered by the window starts
            index = [slice(None)] * x.dim()
            result = None
            for shift in range(k):
                index[dim] = slice(shift, shift + span, s)
                window = x[tuple(index)]
                result = window if result is None else torch.maximum(result, window)
            x = result
        return x


class InceptionBlock(nn.Module):
    """Four branches concatenated on channels in the order 0..3. ``out`` = channels of (b0 1x1, b1 1x1, b1 3x3x3,
    b2 1x1, b2 3x3x3, b3 1x1 after a 3x3x3 max-pool)."""

    def __init__(self, tf_name: str, in_channels: int, out: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.branch_0 = Unit3D(f"{tf_name}/Branch_0/Conv3d_0a_1x1", in_channels, out[0])
        self.branch_1a = Unit3D(f"{tf_name}/Branch_1/Conv3d_0a_1x1", in_channels, out[1])
        self.branch_1b = Unit3D(f"{tf_name}/Branch_1/Conv3d_0b_3x3", out[1], out[2], (3, 3, 3))
        self.branch_2a = Unit3D(f"{tf_name}/Branch_2/Conv3d_0a_1x1", in_channels, out[3])
        self.branch_2b = Unit3D(f"{tf_name}/Branch_2/Conv3d_0b_3x3", out[3], out[4], (3, 3, 3))
        self.branch_3_pool = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.branch_3b = Unit3D(f"{tf_name}/Branch_3/Conv3d_0b_1x1", in_channels, out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch_0(x),
            self.branch_1b(self.branch_1a(x)),
            self.branch_2b(self.branch_2a(x)),
            self.branch_3b(self.branch_3_pool(x)),
        ], dim=1)


# (name, kind, arguments): kind "unit" = (out channels, kernel, stride), "pool" = (kernel, stride),
# "mixed" = the six channel counts of InceptionBlock.
ARCHITECTURE: list[tuple[str, str, tuple]] = [
    ("Conv3d_1a_7x7", "unit", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "unit", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128)),
]
ENDPOINTS = tuple(name for name, _, _ in ARCHITECTURE) + ("Logits",)


def resize_frames(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Every frame of ``[B, C, T, H, W]`` resized to ``size`` x ``size``: bilinear, ``align_corners=False``
    (StyleGAN-V's ``resize=True``)."""
    if x.shape[-2:] == (size, size):
        return x
    b, c, t, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return frames.reshape(b, t, c, size, size).permute(0, 2, 1, 3, 4).contiguous()


class I3D(nn.Module):
    """``model(x)``: float32 ``[B, 3, T >= 9, 224, 224]`` in [-1, 1] -> the time-averaged logits ``[B, 400]``;
    ``resize=True`` accepts any frame size. ``rescale=True`` or ``return_features=False``: ValueError."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        channels = 3
        for name, kind, args in ARCHITECTURE:
            if kind == "unit":
                out, kernel, stride = args
                self.add_module(name, Unit3D(name, channels, out, kernel, stride))
                channels = out
            elif kind == "pool":
                self.add_module(name, MaxPool3dSame(*args))
            else:
                block = InceptionBlock(name, channels, args)
                self.add_module(name, block)
                channels = block.out_channels
        self.Logits = Unit3D("Logits/Conv3d_0c_1x1", channels, num_classes, batch_norm=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        if rescale or not return_features:
            raise ValueError(f"I3D supports only rescale=False, return_features=True (input already in [-1, 1], "
                             f"400-d logits out); got rescale={rescale}, return_features={return_features}")
        if resize:
            x = resize_frames(x)
        return self.forward_endpoints(x)[0]

    def forward_endpoints(self, x: torch.Tensor,
                          endpoints: Iterable[str] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits ``[B, 400]`` and the activations ``[B, C, T', H', W']`` of the named ``endpoints``."""
        wanted = set(endpoints)
        unknown = wanted - set(ENDPOINTS)
        if unknown:
            raise ValueError(f"unknown I3D endpoint(s) {sorted(unknown)}; known: {', '.join(ENDPOINTS)}")
        if x.dim() != 5 or x.size(1) != 3:
            raise ValueError(f"I3D expects float [B, 3, T, H, W], got {list(x.shape)}")
        found: dict[str, torch.Tensor] = {}
        for name, _, _ in ARCHITECTURE:
            x = getattr(self, name)(x)
            if name in wanted:
                found[name] = x
        if x.size(2) < 2 or x.shape[3:] != (7, 7):
            raise ValueError(f"I3D: Mixed_5c is {list(x.shape[2:])} (T', H', W'); the 2x7x7 VALID average pool needs "
                             f"T' >= 2 and 7x7, i.e. >= 9 frames of 193..224 px (use resize=True for other sizes)")
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        logits = self.Logits(x).squeeze(4).squeeze(3).mean(dim=2)  # [B, 400, T'', 1, 1] -> [B, 400]
        if "Logits" in wanted:
            found["Logits"] = logits
        return logits, found

    def units(self) -> dict[str, Unit3D]:
        """Every convolution unit by its TF name."""
        return {module.tf_name: module for module in self.modules() if isinstance(module, Unit3D)}

"""A stand-in for the StyleGAN-V TorchScript I3D (the real file cannot be downloaded in tests).

Same call signature and output: ``forward(x, rescale, resize, return_features) -> [N, 400]`` on float
``[N, 3, T, H, W]`` in [-1, 1]; it refuses any other call, so the tests also check that the pipeline calls the
detector exactly as docs/METHOD.md §7 says. Features: a fixed random linear map of a pooled clip into the first 16 of
the 400 dimensions, the rest 0 (scipy's sqrtm of a dense, rank-deficient 400 x 400 product can take 10 s on a busy
2-core machine; exact zeros keep it at a fraction of a second).
TorchScript runs the code it holds, so the pipeline loads the saved stub only under ``I3D_TRUST_CODE=1``: the tests
that use it set that switch (the file is ours).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class StubI3D(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 2 * 4 * 4, 16)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        if rescale or not resize or not return_features:
            raise RuntimeError("stub I3D: expected rescale=False, resize=True, return_features=True")
        if x.dim() != 5 or x.size(1) != 3 or x.dtype != torch.float32:
            raise RuntimeError("stub I3D: expected float32 [N, 3, T, H, W]")
        if bool(x.min() < -1.0) or bool(x.max() > 1.0):
            raise RuntimeError("stub I3D: expected values in [-1, 1]")
        varying = torch.tanh(self.proj(F.adaptive_avg_pool3d(x, [2, 4, 4]).flatten(1)))
        return torch.cat([varying, torch.zeros(x.size(0), 400 - 16, dtype=x.dtype, device=x.device)], dim=1)


def save_stub_i3d(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(StubI3D()), str(path))
    return path

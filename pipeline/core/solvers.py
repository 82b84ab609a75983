"""Integrators of dX = f(X, t) dt (+ g(t) dW) over a time grid, independent of any network.

Drift ``f(x, t) -> dx/dt`` with x [B, ...], t [B]; diffusion ``g(t) -> [B]`` or a scalar tensor. N grid times give
N - 1 steps ending exactly at ``grid[-1]`` (docs/METHOD.md §9.5). Solvers report their drift evaluations (NFE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from pipeline.core import rng

Drift = Callable[[Tensor, Tensor], Tensor]
Diffusion = Callable[[Tensor], Tensor]
GridKind = Literal["linear", "quadratic", "cosine"]
Method = Literal["euler", "heun", "euler_maruyama", "heun_sde"]


@dataclass
class Solution:
    """Final state ``x`` at ``grid[-1]``, the drift evaluations used (``nfe``) and the steps taken."""

    x: Tensor
    nfe: int
    steps: int


class CountingDrift:
    """Wraps a drift and counts its calls (``nfe``); also records the times it was called at (first example)."""

    def __init__(self, f: Drift):
        self.f = f
        self.nfe = 0
        self.times: list[float] = []

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        self.times.append(float(t.reshape(-1)[0]))
        return self.f(x, t)


def time_grid(
    n: int, t_min: float = 1e-4, t_max: float = 1 - 1e-4, kind: GridKind = "linear", *,
    device: torch.device | str | None = None,
) -> Tensor:
    """N float64 times t_min + (t_max - t_min) s(u), u = linspace(0, 1, N), endpoints exact; s(u) = u (``linear``),
    u^2 (``quadratic``, finer near t_min) or (1 - cos(pi u)) / 2 (``cosine``, finer at both ends)."""
    if n < 2:
        raise ValueError(f"a time grid needs at least 2 points (1 step), got {n}")
    if not t_min < t_max:
        raise ValueError(f"need t_min < t_max, got {t_min}, {t_max}")
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=device)
    if kind == "linear":
        s = u
    elif kind == "quadratic":
        s = u * u
    elif kind == "cosine":
        s = (1 - torch.cos(math.pi * u)) / 2
    else:
        raise ValueError(f"unknown grid kind {kind!r}; choose linear, quadratic or cosine")
    grid = t_min + (t_max - t_min) * s
    grid[0], grid[-1] = t_min, t_max  # exact endpoints
    return grid


def _prepare(grid: Tensor, x: Tensor) -> tuple[Tensor, list[float]]:
    """Validated grid on x's device and dtype (for the drift's times) and float64 step sizes."""
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"grid must be 1-D with at least 2 times, got shape {list(grid.shape)}")
    g64 = grid.detach().to("cpu", torch.float64)
    if not bool((g64[1:] > g64[:-1]).all()):
        raise ValueError("grid times must be strictly increasing")
    return grid.to(device=x.device, dtype=x.dtype), (g64[1:] - g64[:-1]).tolist()


def _times(t: Tensor, x: Tensor) -> Tensor:
    return t.expand(x.shape[0])


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return v if v.ndim == 0 else v.reshape(-1, *([1] * (x.ndim - 1)))


def euler(f: Drift, x: Tensor, grid: Tensor) -> Solution:
    """Explicit Euler: x <- x + f(x, t_k) (t_{k+1} - t_k) for k = 0..N-2 (N - 1 evaluations)."""
    ts, dts = _prepare(grid, x)
    for k, dt in enumerate(dts):
        x = x + f(x, _times(ts[k], x)) * dt
    return Solution(x, nfe=len(dts), steps=len(dts))


def heun(f: Drift, x: Tensor, grid: Tensor) -> Solution:
    """Heun (explicit trapezoid, 2nd order): predictor Euler step, corrector with the mean slope (2 (N - 1) NFE)."""
    ts, dts = _prepare(grid, x)
    for k, dt in enumerate(dts):
        d0 = f(x, _times(ts[k], x))
        d1 = f(x + d0 * dt, _times(ts[k + 1], x))
        x = x + 0.5 * (d0 + d1) * dt
    return Solution(x, nfe=2 * len(dts), steps=len(dts))


def euler_maruyama(
    f: Drift, g: Diffusion, x: Tensor, grid: Tensor, *, generator: rng.Generator = None,
    noise_last_step: bool = False,
) -> Solution:
    """Euler-Maruyama: x <- x + f(x, t_k) dt_k + g(t_k) sqrt(dt_k) xi_k; the last step adds no noise (as in the
    reference) unless ``noise_last_step``."""
    ts, dts = _prepare(grid, x)
    steps = len(dts)
    for k, dt in enumerate(dts):
        t = _times(ts[k], x)
        x = x + f(x, t) * dt
        if k < steps - 1 or noise_last_step:
            xi = rng.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + _bcast(g(t), x) * math.sqrt(dt) * xi
    return Solution(x, nfe=steps, steps=steps)


def heun_sde(
    f: Drift, g: Diffusion, x: Tensor, grid: Tensor, *, generator: rng.Generator = None,
    noise_last_step: bool = False,
) -> Solution:
    """Stochastic Heun for additive noise (g of t only), 2 (N - 1) NFE. With dW = sqrt(dt_k) xi_k:

        pred = x + f(x, t_k) dt + g(t_k) dW
        x    = x + (f(x, t_k) + f(pred, t_{k+1})) dt / 2 + (g(t_k) + g(t_{k+1})) dW / 2

    The same dW enters predictor and corrector; the last step has dW = 0 unless ``noise_last_step``.
    """
    ts, dts = _prepare(grid, x)
    steps = len(dts)
    for k, dt in enumerate(dts):
        t0, t1 = _times(ts[k], x), _times(ts[k + 1], x)
        d0 = f(x, t0)
        if k < steps - 1 or noise_last_step:
            dw = math.sqrt(dt) * rng.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            g0, g1 = _bcast(g(t0), x), _bcast(g(t1), x)
            d1 = f(x + d0 * dt + g0 * dw, t1)
            x = x + 0.5 * (d0 + d1) * dt + 0.5 * (g0 + g1) * dw
        else:
            d1 = f(x + d0 * dt, t1)
            x = x + 0.5 * (d0 + d1) * dt
    return Solution(x, nfe=2 * steps, steps=steps)


def solve(
    method: Method, f: Drift, x: Tensor, grid: Tensor, *, g: Diffusion | None = None,
    generator: rng.Generator = None,
) -> Solution:
    """Dispatch by name; the SDE methods (``euler_maruyama``, ``heun_sde``) need ``g``; ODE methods ignore it."""
    if method == "euler":
        return euler(f, x, grid)
    if method == "heun":
        return heun(f, x, grid)
    if method == "euler_maruyama":
        if g is None:
            raise ValueError("euler_maruyama needs a diffusion g(t)")
        return euler_maruyama(f, g, x, grid, generator=generator)
    if method == "heun_sde":
        if g is None:
            raise ValueError("heun_sde needs a diffusion g(t)")
        return heun_sde(f, g, x, grid, generator=generator)
    raise ValueError(f"unknown method {method!r}; choose euler, heun, euler_maruyama or heun_sde")

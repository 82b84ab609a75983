"""Closed forms for interpolants between Gaussians, written out independently of pipeline.core.interpolants.

Per coordinate: x1 ~ N(m1, s^2) with m1 = r + m (previous base, x0 = r fixed) or m1 = m (gaussian base,
x0 ~ N(0, 1) independent). With alpha = 1 - t, beta = t^p, sigma = eps (1 - t), xi ~ N(0, 1):

    I_t     = alpha x0 + beta x1 + sigma sqrt(t) xi
    target  = alpha' x0 + beta' x1 + sigma' sqrt(t) xi

Everything is jointly Gaussian, so by Gaussian conditioning the drift b(x, t) = E[target | I_t = x] is
affine in x: b = E[target] + Cov(target, I_t) / Var(I_t) (x - E[I_t]), and the score of I_t is
-(x - E[I_t]) / Var(I_t). At t = 1 the law of I_1 is exactly the law of x1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GaussianCase:
    base: str  # "previous" or "gaussian"
    p: float  # beta = t ** p
    eps: float  # sigma = eps (1 - t)
    r: Tensor  # [D] reference values (previous base; ignored for the gaussian base)
    m: Tensor  # [D] mean displacement x1 - r (previous) or mean of x1 (gaussian)
    s: Tensor  # [D] std of x1

    @property
    def x1_mean(self) -> Tensor:
        return self.r + self.m if self.base == "previous" else self.m

    def _coefs(self, t: Tensor):
        t = t.reshape(-1, 1).to(self.m.dtype)
        alpha, dalpha = 1 - t, -torch.ones_like(t)
        beta, dbeta = t**self.p, self.p * t ** (self.p - 1)
        sigma, dsigma = self.eps * (1 - t), -self.eps * torch.ones_like(t)
        if self.base == "previous":
            ex0, vx0 = self.r, torch.zeros_like(self.r)
        else:
            ex0, vx0 = torch.zeros_like(self.m), torch.ones_like(self.m)
        mean = alpha * ex0 + beta * self.x1_mean
        var = alpha**2 * vx0 + beta**2 * self.s**2 + sigma**2 * t
        cov = dalpha * alpha * vx0 + dbeta * beta * self.s**2 + dsigma * sigma * t
        target_mean = dalpha * ex0 + dbeta * self.x1_mean
        return mean, var, cov, target_mean

    def mean(self, t: Tensor) -> Tensor:
        return self._coefs(t)[0]

    def var(self, t: Tensor) -> Tensor:
        return self._coefs(t)[1]

    def gain(self, t: Tensor) -> Tensor:
        """K(t) = Cov(target, I_t) / Var(I_t): the slope of the exact drift in x."""
        _, var, cov, _ = self._coefs(t)
        return cov / var

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact E[target | I_t = x] for x [P, D], t [P]."""
        mean, var, cov, target_mean = self._coefs(t)
        return target_mean + cov / var * (x - mean)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        mean, var, _, _ = self._coefs(t)
        return -(x - mean) / var

    def sigma(self, t: Tensor) -> Tensor:
        return self.eps * (1 - t)


def euler_maruyama_moments(case: GaussianCase, grid: Tensor, x_start_mean: Tensor, x_start_var: Tensor):
    """Exact mean and variance after Euler-Maruyama with the exact (affine) drift and g = sigma on ``grid``:
    N - 1 steps over grid[:-1], no noise on the last one. Deterministic, float64."""
    mean, var = x_start_mean.double().clone(), x_start_var.double().clone()
    steps = grid.numel() - 1
    for k in range(steps):
        t = grid[k].reshape(1).double()
        dt = float(grid[k + 1] - grid[k])
        gain = case.gain(t)[0]
        mean = mean + dt * case.drift(mean.unsqueeze(0), t)[0]
        var = (1 + dt * gain) ** 2 * var
        if k < steps - 1:
            var = var + float(case.sigma(t)) ** 2 * dt
    return mean, var


def standard_normal(shape, generator: torch.Generator, dtype=torch.float64) -> Tensor:
    """N(0, 1) draws standardised per column to sample mean 0 and variance 1 exactly (for ODE tests)."""
    z = torch.randn(shape, generator=generator, dtype=dtype)
    return (z - z.mean(0)) / z.std(0)


def moments_ok(x: Tensor, mean: Tensor, var: Tensor, mean_tol: float, var_rel_tol: float) -> bool:
    """Per-column sample mean within mean_tol * sqrt(var) and sample variance within var_rel_tol (relative)."""
    x = x.double()
    dm = (x.mean(0) - mean).abs() / var.sqrt()
    dv = (x.var(0) / var - 1).abs()
    return bool((dm <= mean_tol).all() and (dv <= var_rel_tol).all())


def describe(x: Tensor, mean: Tensor, var: Tensor) -> str:
    x = x.double()
    return (
        f"mean error / sd {((x.mean(0) - mean) / var.sqrt()).tolist()}, "
        f"variance ratio - 1 {(x.var(0) / var - 1).tolist()}"
    )


def se_mean(n: int) -> float:
    """Standard error of a sample mean, in units of the standard deviation."""
    return 1 / math.sqrt(n)

"""Worked examples of interpolants defined outside the pipeline (docs/interpolants.md).

Select one from the repository root (or with this directory's parent on PYTHONPATH) by ``module:Name``:

    make eval RUN=trig ARGS='--set interpolant.kind=examples.interpolants:Trig'

Editing this file makes the runs made with it stale: its sha256 enters their fingerprints.
"""

from __future__ import annotations

import math

import torch

from pipeline.core.interpolants import Interpolant, OneMinusTPower, StochasticInterpolant, TPower


class Trig(Interpolant):
    """I_t = cos(pi t / 2) x0 + sin(pi t / 2) x1, x0 ~ N(0, I): a variance-preserving path (alpha^2 + beta^2 = 1)
    from Gaussian noise, without noise along the way (sigma = 0: an ODE, like ``linear``). The derivatives are left
    to autograd; defining ``alpha_dot`` etc. would replace it."""

    base = "gaussian"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(math.pi / 2 * t)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(math.pi / 2 * t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)


def quadratic_noise(t_min: float = 1e-4, t_max: float = 1 - 1e-4) -> StochasticInterpolant:
    """``ours`` with its noise fading faster: I_t = (1 - t) x_ref + t^2 x1 + 0.1 (1 - t)^2 sqrt(t) xi, from the
    previous frame. A function returning an interpolant, built from coefficients with analytic derivatives."""
    return StochasticInterpolant(alpha=OneMinusTPower(1.0), beta=TPower(2.0), sigma=OneMinusTPower(2.0, 0.1),
                                 base="previous", t_min=t_min, t_max=t_max, name="quadratic_noise")

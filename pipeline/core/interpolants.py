"""Stochastic interpolants between a base point and the next latent frame (docs/METHOD.md §3, docs/interpolants.md).

    I_t = alpha(t) x0 + beta(t) x1 + sigma(t) sqrt(t) xi,   xi ~ N(0, I),  t in [0, 1]

x1: latent of the frame to predict, x_ref: of the previous frame. Base ``gaussian``: x0 ~ N(0, I); base
``previous``: x0 = x_ref (a point mass). As sigma(t) sqrt(t) xi has the law of sigma(t) W_t, the regression target
is alpha' x0 + beta' x1 + sigma' sqrt(t) xi (W_t held as a process, not d/dt of sigma sqrt(t), singular at 0); its
conditional mean b(x, t) with dX = b dt + sigma dW reproduces the interpolant's marginals, so X_1 ~ x1. sigma = 0:
plain velocity, ODE.

An interpolant is an :class:`Interpolant`: its base, alpha, beta, sigma, their time derivatives (autograd unless
given) and its training times. :class:`StochasticInterpolant` is the configurable family alpha = 1 - t, beta in
{t, t^2}, sigma = eps (1 - t), with the presets ``linear`` (gaussian, beta = t, eps = 0; target x1 - x0) and ``ours``
(previous, beta = t^2, eps = 0.1; target -x_ref + 2t x1 - 0.1 sqrt(t) xi). Other kinds are found by name in
``pipeline.core.interpolant_kinds.REGISTRY`` or as ``module:Name``. Solvers (``pipeline.core.solvers``) see only a drift
f(x, t) and a diffusion g(t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, NamedTuple

import torch
from torch import Tensor

from pipeline.core import rng
from pipeline.run.config import INTERPOLANT_PRESETS

if TYPE_CHECKING:
    from pipeline.run.config import InterpolantConfig

Base = Literal["gaussian", "previous"]
TimeFn = Callable[[Tensor], Tensor]  # g(t): t [B] -> [B]
DriftFn = Callable[[Tensor, Tensor], Tensor]  # f(x, t): x [B, ...], t [B] -> [B, ...]


def autograd_derivative(f: TimeFn, t: Tensor) -> Tensor:
    """d f / dt at every element of ``t`` by autograd, for an ``f`` acting elementwise (so the gradient of the sum is
    the pointwise derivative); also under ``torch.no_grad`` (sampling). A constant ``f`` has derivative 0."""
    with torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        value = f(tt)
        if not (isinstance(value, Tensor) and value.requires_grad):
            return torch.zeros_like(tt)
        (grad,) = torch.autograd.grad(value.sum(), tt, allow_unused=True)
    return torch.zeros_like(tt) if grad is None else grad


class Coefficient:
    """A scalar function of time c(t) with its derivative; both act elementwise on a tensor ``t``. A subclass defines
    ``__call__``; ``deriv`` is by autograd unless it defines it too."""

    def __call__(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def deriv(self, t: Tensor) -> Tensor:
        return autograd_derivative(self, t)


def derivative(f: TimeFn, t: Tensor) -> Tensor:
    """d f / dt: a :class:`Coefficient`'s own ``deriv``, else autograd."""
    return f.deriv(t) if isinstance(f, Coefficient) else autograd_derivative(f, t)


@dataclass(frozen=True)
class TPower(Coefficient):
    """c(t) = scale * t**power (power >= 1 keeps the derivative finite at 0)."""

    power: float = 1.0
    scale: float = 1.0

    def __call__(self, t: Tensor) -> Tensor:
        return self.scale * t**self.power

    def deriv(self, t: Tensor) -> Tensor:
        if self.power == 0:
            return torch.zeros_like(t)
        if self.power == 1:
            return torch.full_like(t, self.scale)
        return self.scale * self.power * t ** (self.power - 1)


@dataclass(frozen=True)
class OneMinusTPower(Coefficient):
    """c(t) = scale * (1 - t)**power; ``OneMinusTPower(1, eps)`` is sigma(t), ``(4, eps)`` the [NS] alternative g."""

    power: float = 1.0
    scale: float = 1.0

    def __call__(self, t: Tensor) -> Tensor:
        return self.scale * (1 - t) ** self.power

    def deriv(self, t: Tensor) -> Tensor:
        if self.power == 0:
            return torch.zeros_like(t)
        if self.power == 1:
            return torch.full_like(t, -self.scale)
        return -self.scale * self.power * (1 - t) ** (self.power - 1)


@dataclass(frozen=True)
class Scaled(Coefficient):
    """c(t) = factor * f(t) for any function of time f (derivative by ``f``'s own, or autograd)."""

    f: TimeFn
    factor: float

    def __call__(self, t: Tensor) -> Tensor:
        return self.factor * self.f(t)

    def deriv(self, t: Tensor) -> Tensor:
        return self.factor * derivative(self.f, t)


def scaled(coef: TimeFn, factor: float) -> Coefficient:
    """``factor * coef`` (e.g. a diffusion g = 2 sigma at sampling time); the power families stay in their family."""
    if isinstance(coef, (TPower, OneMinusTPower)):
        return type(coef)(coef.power, coef.scale * factor)
    return Scaled(coef, float(factor))


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """Per-example times [B] (or a scalar) -> shape [B, 1, ..., 1] broadcastable against ``x``, in x's dtype."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    if t.shape != x.shape[:1]:
        raise ValueError(f"times must have shape [B]={list(x.shape[:1])}, got {list(t.shape)}")
    return t.reshape(-1, *([1] * (x.ndim - 1)))


class TrainingPair(NamedTuple):
    """One training example batch: network input ``xt`` = I_t and regression ``target``; plus the draws used."""

    xt: Tensor
    target: Tensor
    x0: Tensor
    xi: Tensor


class Interpolant:
    """An interpolant I_t = alpha(t) x0 + beta(t) x1 + sigma(t) sqrt(t) xi (docs/interpolants.md). Tensors are
    [B, ...] (latents [B, C, h, w]); times [B] or scalars.

    A subclass sets ``base`` ('gaussian' or 'previous') and defines ``alpha``, ``beta`` and ``sigma`` (methods of t or
    :class:`Coefficient` attributes, elementwise on a time tensor); ``alpha_dot``, ``beta_dot``, ``sigma_dot``
    default to autograd, ``sample_t`` (training times) to U(t_min, t_max). :meth:`check` states the rules.
    """

    t_min: float = 1e-4
    t_max: float = 1 - 1e-4
    name: str = ""

    def __init__(self, t_min: float = 1e-4, t_max: float = 1 - 1e-4) -> None:
        self.t_min, self.t_max, self.name = float(t_min), float(t_max), self.name or type(self).__name__

    def alpha_dot(self, t: Tensor) -> Tensor:
        """dalpha/dt: by autograd (a Coefficient's own ``deriv``) unless a subclass gives it."""
        return derivative(self.alpha, t)  # type: ignore[attr-defined]

    def beta_dot(self, t: Tensor) -> Tensor:
        """dbeta/dt: by autograd (a Coefficient's own ``deriv``) unless a subclass gives it."""
        return derivative(self.beta, t)  # type: ignore[attr-defined]

    def sigma_dot(self, t: Tensor) -> Tensor:
        """dsigma/dt: by autograd (a Coefficient's own ``deriv``) unless a subclass gives it."""
        return derivative(self.sigma, t)  # type: ignore[attr-defined]

    def check(self) -> None:
        """ValueError naming the first broken rule: base 'gaussian' or 'previous'; 0 <= t_min < t_max <= 1; I_0 = x0
        and I_1 = x1 (alpha(0) = beta(1) = 1, alpha(1) = beta(0) = sigma(1) = 0); finite values and derivatives on
        [t_min, t_max]; noise (sigma not identically 0) with the previous base, whose point mass has no spread."""
        if getattr(self, "base", None) not in ("gaussian", "previous"):
            raise ValueError(f"{self.name}: base must be 'gaussian' or 'previous', got {getattr(self, 'base', None)!r}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"{self.name}: need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        ends, grid = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.linspace(self.t_min, self.t_max, 33, dtype=torch.float64)
        for part, want in (("alpha", (1.0, 0.0)), ("beta", (0.0, 1.0)), ("sigma", (None, 0.0))):
            fn, dot = getattr(self, part, None), getattr(self, f"{part}_dot")
            if not callable(fn):
                raise ValueError(f"{self.name}: defines no {part}(t)")
            got = torch.as_tensor(fn(ends), dtype=torch.float64).expand(2).tolist()
            for t, value, expected in zip((0, 1), got, want):
                if expected is not None and not abs(value - expected) <= 1e-6:
                    raise ValueError(f"{self.name}: {part}({t}) = {value:g}, must be {expected:g} (I_0 = x0, I_1 = x1)")
            if not all(bool(torch.isfinite(torch.as_tensor(v)).all()) for v in (fn(grid), dot(grid))):
                raise ValueError(f"{self.name}: {part} or its derivative is not finite on [t_min, t_max]")
        if self.base == "previous" and not self.is_sde:
            raise ValueError(f"{self.name}: the previous-frame base needs noise (sigma not 0): a point mass has no spread")

    @property
    def is_sde(self) -> bool:
        """True when the interpolant carries noise (sigma not 0 somewhere on [0, 1]): sample with an SDE solver."""
        t = torch.linspace(0.0, 1.0, 33, dtype=torch.float64)
        return bool((torch.as_tensor(self.sigma(t)) != 0).any())  # type: ignore[attr-defined]

    @property
    def reference_solver(self) -> str:
        """The reference's sampler for this interpolant: ``euler_maruyama`` (SDE) or ``euler`` (ODE)."""
        return "euler_maruyama" if self.is_sde else "euler"

    @property
    def heun_solver(self) -> str:
        """The second-order counterpart: ``heun_sde`` (SDE) or ``heun`` (ODE); twice the NFE per step."""
        return "heun_sde" if self.is_sde else "heun"

    def sample_t(
        self, batch: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Per-example training times t ~ U(t_min, t_max), shape [batch]."""
        u = torch.rand(batch, generator=generator, device=device, dtype=dtype)
        return self.t_min + (self.t_max - self.t_min) * u

    def sample_base(self, x_ref: Tensor, *, generator: rng.Generator = None) -> Tensor:
        """The base point x0 given the reference latent: N(0, I) draws (gaussian) or a copy of x_ref (previous)."""
        if self.base == "previous":  # type: ignore[attr-defined]
            return x_ref.clone()
        return rng.randn(x_ref.shape, generator=generator, device=x_ref.device, dtype=x_ref.dtype)

    def sample_start(self, x_ref: Tensor, t0: float, *, generator: rng.Generator = None) -> Tensor:
        """alpha(t0) x0 + sigma(t0) sqrt(t0) xi: a start at t0 > 0 with the interpolant's spread. With g < sigma the
        process forgets its start only like (t0 / t)^((g/sigma)^2): a point mass would leave a variance deficit."""
        x0 = self.sample_base(x_ref, generator=generator)
        t = torch.tensor(float(t0), dtype=torch.float64)
        a, s = float(self.alpha(t)), float(self.sigma(t) * t.sqrt())  # type: ignore[attr-defined]
        if s == 0.0:
            return a * x0
        xi = rng.randn(x_ref.shape, generator=generator, device=x_ref.device, dtype=x_ref.dtype)
        return a * x0 + s * xi

    def interpolate(self, t: Tensor, x0: Tensor, x1: Tensor, xi: Tensor) -> Tensor:
        """I_t = alpha(t) x0 + beta(t) x1 + sigma(t) sqrt(t) xi."""
        tb = _bcast(t, x1)
        return self.alpha(tb) * x0 + self.beta(tb) * x1 + self.sigma(tb) * tb.sqrt() * xi  # type: ignore[attr-defined]

    def target(self, t: Tensor, x0: Tensor, x1: Tensor, xi: Tensor) -> Tensor:
        """Regression target alpha'(t) x0 + beta'(t) x1 + sigma'(t) sqrt(t) xi (velocity x1 - x0 for ``linear``)."""
        tb = _bcast(t, x1)
        return self.alpha_dot(tb) * x0 + self.beta_dot(tb) * x1 + self.sigma_dot(tb) * tb.sqrt() * xi

    def training_pair(
        self, x1: Tensor, x_ref: Tensor, t: Tensor, *, generator: torch.Generator | None = None,
        xi: Tensor | None = None, x0: Tensor | None = None,
    ) -> TrainingPair:
        """(I_t, target) at times ``t`` [B]; ``x0`` (gaussian base only), then ``xi``, are drawn unless given."""
        if x1.shape != x_ref.shape:
            raise ValueError(f"x1 {list(x1.shape)} and x_ref {list(x_ref.shape)} differ in shape")
        if x0 is None:
            x0 = self.sample_base(x_ref, generator=generator)
        elif self.base == "previous":  # type: ignore[attr-defined]
            raise ValueError("the previous-frame base is x_ref itself; do not pass x0")
        if xi is None:
            xi = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        return TrainingPair(self.interpolate(t, x0, x1, xi), self.target(t, x0, x1, xi), x0, xi)

    @staticmethod
    def per_example_loss(pred: Tensor, target: Tensor) -> Tensor:
        """Sum of squared errors over every non-batch dimension (C, h, w): shape [B]."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {list(pred.shape)} and target {list(target.shape)} differ in shape")
        return (pred - target).pow(2).flatten(1).sum(1)

    @classmethod
    def loss(cls, pred: Tensor, target: Tensor) -> Tensor:
        """The reference loss: per-example SUM over (C, h, w), MEAN over the batch (docs/METHOD.md §3)."""
        return cls.per_example_loss(pred, target).mean()

    def diffusion(self, t: Tensor) -> Tensor:
        """The default diffusion coefficient g(t) = sigma(t) (the one the drift was trained for)."""
        return self.sigma(t)  # type: ignore[attr-defined]

    def score(self, b: Tensor, x: Tensor, t: Tensor, x0: Tensor | None = None) -> Tensor:
        """Score grad log p_t(x) (given x0 for the previous base) from a drift estimate b(x, t).

        I_t = m + beta x1 + z, m = alpha x0 (previous; 0 for gaussian), z = [alpha x0 if gaussian] + sigma W_t with
        variance v = [alpha^2] + sigma^2 t and covariance c = [alpha alpha'] + sigma sigma' t with the target's part.
        b = a0 + beta' E[x1|x] + (c / v) E[z|x] (a0 = alpha' x0, previous) and s = -E[z|x] / v give
        s = (beta' (x - m) - beta (b - a0)) / (beta c - beta' v) (docs/METHOD.md §3). The denominator vanishes at
        t = 1 and, for the previous base, at t = 0 (clamp t); the previous base without noise has no score: raises.
        """
        tb = _bcast(t, x)
        a, da = self.alpha(tb), self.alpha_dot(tb)  # type: ignore[attr-defined]
        bt, dbt = self.beta(tb), self.beta_dot(tb)  # type: ignore[attr-defined]
        s, ds = self.sigma(tb), self.sigma_dot(tb)  # type: ignore[attr-defined]
        v = s * s * tb
        c = s * ds * tb
        if self.base == "previous":  # type: ignore[attr-defined]
            if x0 is None:
                raise ValueError("the previous-frame base needs x0 = x_ref to compute the score")
            if not self.is_sde:
                raise ValueError("no score for a previous-frame base without noise (sigma = 0, eps = 0): the law is degenerate")
            num = dbt * (x - a * x0) - bt * (b - da * x0)
        else:
            v = v + a * a
            c = c + a * da
            num = dbt * x - bt * b
        return num / (bt * c - dbt * v)

    def retuned_drift(
        self, b: Tensor, x: Tensor, t: Tensor, g: TimeFn, x0: Tensor | None = None, *, t_floor: float | None = None,
    ) -> Tensor:
        """Drift for a new diffusion g(t): b_g = b + (g^2 - sigma^2)/2 * s(b, x, t) (docs/METHOD.md §3).

        dX = b_g dt + g dW has the marginals of dX = b dt + sigma dW (Fokker-Planck). The score is taken at
        max(t, t_floor) (default ``t_min``), away from its zero denominator. For the previous base with g != sigma
        the correction ~ (1 - g^2/sigma^2) (x - mean) / (2t) is stiff near 0: use a grid fine near t_min
        (``sampling.check_first_step``) and :meth:`sample_start`.
        """
        tb = _bcast(t, x)
        floor = self.t_min if t_floor is None else t_floor
        ts = torch.as_tensor(t, dtype=x.dtype, device=x.device).clamp_min(floor)
        score = self.score(b, x, ts, x0)
        gt, st = g(tb), self.sigma(tb)  # type: ignore[attr-defined]
        return b + 0.5 * (gt * gt - st * st) * score

    def sampling_drift(
        self, drift_fn: DriftFn, x0: Tensor | None = None, g: TimeFn | None = None, *, t_floor: float | None = None,
    ) -> DriftFn:
        """The drift f(x, t) a solver integrates: ``drift_fn`` itself when g is None or sigma, else re-tuned to g
        (:meth:`retuned_drift`; needs ``x0`` = x_ref for the previous base). Same network evaluations either way."""
        if g is None or g is self.sigma or g == self.sigma:  # type: ignore[attr-defined]
            return drift_fn
        if self.base == "previous" and x0 is None:  # type: ignore[attr-defined]
            raise ValueError("re-tuning the previous-frame base needs x0 = x_ref")

        def retuned(x: Tensor, t: Tensor) -> Tensor:
            return self.retuned_drift(drift_fn(x, t), x, t, g, x0, t_floor=t_floor)

        return retuned


@dataclass(frozen=True)
class StochasticInterpolant(Interpolant):
    """The interpolant with :class:`Coefficient` fields: alpha, beta, sigma and the base given when made."""

    alpha: Coefficient
    beta: Coefficient
    sigma: Coefficient
    base: Base
    t_min: float = 1e-4  # training times t ~ U(t_min, t_max)
    t_max: float = 1 - 1e-4
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.base not in ("gaussian", "previous"):
            raise ValueError(f"base must be 'gaussian' or 'previous', got {self.base!r}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")


PRESETS = INTERPOLANT_PRESETS  # {name: {base, beta, eps}}, defined beside the config

_BETAS = {"t": TPower(1.0), "t2": TPower(2.0)}


def make_interpolant(
    base: Base, beta: Literal["t", "t2"], eps: float, t_min: float = 1e-4, t_max: float = 1 - 1e-4,
    name: str = "custom",
) -> StochasticInterpolant:
    """alpha = 1 - t, beta = t or t^2, sigma = eps (1 - t), with the given base."""
    if beta not in _BETAS:
        raise ValueError(f"beta must be one of {sorted(_BETAS)}, got {beta!r}")
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return StochasticInterpolant(
        alpha=OneMinusTPower(1.0), beta=_BETAS[beta], sigma=OneMinusTPower(1.0, float(eps)), base=base,
        t_min=t_min, t_max=t_max, name=name,
    )


def linear(t_min: float = 1e-4, t_max: float = 1 - 1e-4) -> StochasticInterpolant:
    """The ``linear`` preset: I_t = (1 - t) x0 + t x1, x0 ~ N(0, I); target x1 - x0; ODE."""
    return make_interpolant(**PRESETS["linear"], t_min=t_min, t_max=t_max, name="linear")


def ours(t_min: float = 1e-4, t_max: float = 1 - 1e-4) -> StochasticInterpolant:
    """The ``ours`` preset: I_t = (1 - t) x_ref + t^2 x1 + 0.1 (1 - t) sqrt(t) xi; SDE with sigma = 0.1 (1 - t)."""
    return make_interpolant(**PRESETS["ours"], t_min=t_min, t_max=t_max, name="ours")


def build_interpolant(cfg: "InterpolantConfig") -> Interpolant:
    """The interpolant a validated :class:`pipeline.run.config.InterpolantConfig` describes: the config's own kinds
    here, one defined in code by :mod:`pipeline.core.interpolant_kinds`."""
    if cfg.kind not in ("linear", "ours", "custom"):
        from pipeline.core.interpolant_kinds import build  # imports this module: loaded when first needed

        return build(cfg.kind, cfg.t_min, cfg.t_max)
    p = cfg.resolved()
    return make_interpolant(p["base"], p["beta"], p["eps"], cfg.t_min, cfg.t_max, name=cfg.kind)

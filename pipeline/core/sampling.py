"""Autoregressive latent rollout (docs/METHOD.md §6), one new frame at a time. With n latent frames so far:

* reference = frame n - 1; context c uniform on {lo, ..., n - 2} per example, lo = 0 (whole history) or
  max(0, n - H) for ``past_horizon`` H >= 2 (the last H frames, reference included; docs/METHOD.md §9.15), so
  gap = (n - 1) - c >= 1. ``per_frame`` draws c once per frame ([VI]), ``per_step`` at every network call (RIVER);
* start at the interpolant's base given the reference, or at its spread at the first grid time (``sample.start``;
  the default when the diffusion is re-tuned);
* integrate f(x, t) = model(x, t, ref, context, gap) (re-tuned when asked) over the grid, ending exactly at t_max;
* append the result: generated frames join the history of later frames.

A single conditioning frame is duplicated first (distinct reference and context indices) and the copy dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from pipeline.core import rng
from pipeline.core import solvers as S
from pipeline.core.interpolants import Interpolant, OneMinusTPower, TimeFn, scaled
from pipeline.core.latent_norm import LatentNorm

if TYPE_CHECKING:
    from pipeline.run.config import SamplingConfig

ODE_SOLVERS = ("euler", "heun")
SDE_SOLVERS = ("euler_maruyama", "heun_sde")
ZERO_DIFFUSION = OneMinusTPower(1.0, 0.0)  # g = 0: the probability-flow ODE of an SDE interpolant

ContextDraw = Callable[[], Tensor]  # () -> context indices [B] (long, on the latents' device)


@dataclass
class RolloutResult:
    """``latents`` [B, n0 + n_generate, C, h, w]: the conditioning frames unchanged, then the generated ones."""

    latents: Tensor
    nfe_per_frame: int  # network evaluations per generated frame (the same for every frame)
    nfe: int  # network evaluations in all (nfe_per_frame * n_generate)
    solver: str  # the method used (``auto`` resolved)
    steps: int  # solver steps per frame (grid points - 1)


@dataclass
class SampleResult:
    """``latents`` [B, n_samples, n0 + n_generate, C, h, w]: ``n_samples`` futures per conditioning video."""

    latents: Tensor
    nfe_per_frame: int
    solver: str
    steps: int


def resolve_solver(cfg: "SamplingConfig", interpolant: Interpolant) -> str:
    """The integrator name: ``cfg.solver``; for ``auto`` the interpolant's reference solver (Euler or
    Euler-Maruyama), for ``auto_heun`` its second-order counterpart (Heun or stochastic Heun)."""
    automatic = {"auto": interpolant.reference_solver, "auto_heun": interpolant.heun_solver}
    method = automatic.get(cfg.solver, cfg.solver)
    if method not in ODE_SOLVERS + SDE_SOLVERS:
        choices = ", ".join([*automatic, *ODE_SOLVERS, *SDE_SOLVERS])
        raise ValueError(f"unknown solver {cfg.solver!r}; choose {choices}")
    return method


def _noise_level(interpolant: Interpolant) -> float:
    """sigma(0): eps for sigma(t) = eps (1 - t)."""
    return float(interpolant.sigma(torch.tensor(0.0, dtype=torch.float64)))


def sampling_diffusion(cfg: "SamplingConfig", interpolant: Interpolant, method: str) -> TimeFn | None:
    """The diffusion g(t) to sample with, or None for the trained sigma. SDE solvers: ``sigma_scaled`` =
    diffusion_scale * sigma, ``quartic`` = diffusion_scale * sigma(0) (1 - t)^4 ([NS]; sigma(0) = eps for the config's
    kinds); re-tuning needs sigma not 0 (a score).
    ODE solvers: g = 0 (probability-flow ODE) for an SDE interpolant."""
    g = _requested_diffusion(cfg, interpolant, method)
    if g is not None:
        check_first_step(cfg, interpolant, g, method)
    return g


def _requested_diffusion(cfg: "SamplingConfig", interpolant: Interpolant, method: str) -> TimeFn | None:
    """:func:`sampling_diffusion` before the grid check."""
    if method in ODE_SOLVERS:
        if cfg.diffusion != "sigma":
            raise ValueError(f"diffusion={cfg.diffusion} re-tunes an SDE; solver {method} integrates an ODE")
        return ZERO_DIFFUSION if interpolant.is_sde else None
    if cfg.diffusion == "sigma":
        return None
    if not interpolant.is_sde:
        raise ValueError(
            f"diffusion={cfg.diffusion} scales the trained noise, and interpolant {interpolant.name!r} has none (sigma = 0)"
        )
    if cfg.diffusion == "sigma_scaled":
        if cfg.diffusion_scale == 1.0:
            return None
        return scaled(interpolant.sigma, cfg.diffusion_scale)
    if cfg.diffusion == "quartic":
        return OneMinusTPower(4.0, cfg.diffusion_scale * _noise_level(interpolant))
    raise ValueError(f"unknown diffusion {cfg.diffusion!r}; choose sigma, sigma_scaled or quartic")


MAX_FIRST_STEP_STIFFNESS = 2.0  # |lambda h| of the first step: explicit Euler / Heun are stable for lambda h in [-2, 0]


def retuning_stiffness(interpolant: Interpolant, g: TimeFn, t: float) -> float:
    """lambda(t) = d/dx of the re-tuning term (g^2 - sigma^2)/2 * s(b, x, t), b fixed (s is affine in x): about
    (1 - g^2/sigma^2) / (2t) for the previous base, O(1) for the gaussian base."""
    one = torch.ones(1, dtype=torch.float64)
    tt = torch.full((1,), float(t), dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    slope = interpolant.score(zero, one, tt, zero) - interpolant.score(zero, zero, tt, zero)
    gap = g(tt) ** 2 - interpolant.sigma(tt) ** 2
    return float(0.5 * gap * slope)


def check_first_step(cfg: "SamplingConfig", interpolant: Interpolant, g: TimeFn, method: str) -> None:
    """ValueError (with a remedy) when the grid's first step h is too coarse for the re-tuned drift near t_min:
    explicit steps multiply the start's deviations by about lambda h."""
    t0, t1 = (float(v) for v in S.time_grid(cfg.steps, cfg.t_min, cfg.t_max, cfg.grid)[:2])
    rate = retuning_stiffness(interpolant, g, max(t0, interpolant.t_min))  # where the drift evaluates the score
    stiffness = rate * (t1 - t0)
    if abs(stiffness) <= MAX_FIRST_STEP_STIFFNESS:
        return
    what = (f"solver {method} integrates the probability-flow ODE (g = 0) of {interpolant.name!r}" if g is ZERO_DIFFUSION
            else f"diffusion={cfg.diffusion} (scale {cfg.diffusion_scale:g}) re-tunes {interpolant.name!r}")
    raise ValueError(
        f"{what}, whose drift near t = {t0:g} changes on a time scale of about {1 / abs(rate):.2g}; the first grid "
        f"step ({t1 - t0:.3g}, {cfg.grid} grid of {cfg.steps} points) is {abs(stiffness):.1f}x that (explicit steps "
        f"need <= {MAX_FIRST_STEP_STIFFNESS:g}x). Make the grid fine near its start, e.g. sample.grid=quadratic with "
        "sample.t_min=0.01 (docs/METHOD.md §3)"
    )


def context_bounds(n: int, past_horizon: int) -> tuple[int, int]:
    """Context indices {lo, ..., n - 2} for n frames: H = ``past_horizon`` 0 means lo = 0, H >= 2 the last H frames
    with the reference (lo = max(0, n - H)); H = 1 leaves no context and raises."""
    if n < 2:
        raise ValueError(f"need at least 2 frames of history (reference and context), got {n}")
    if past_horizon == 1 or past_horizon < 0:
        raise ValueError(f"past_horizon must be 0 (whole history) or >= 2 (the last H frames, reference included), "
                         f"got {past_horizon}")
    lo = 0 if past_horizon == 0 else max(0, n - past_horizon)
    return lo, n - 2


def draw_context(
    batch: int, n: int, past_horizon: int, *, generator: rng.Generator, device: torch.device
) -> Tensor:
    """Context indices [batch], uniform on {lo, ..., n - 2} independently per example (see :func:`context_bounds`)."""
    lo, hi = context_bounds(n, past_horizon)
    return rng.randint(lo, hi + 1, (batch,), generator=generator, device=device)


def resolve_start(cfg: "SamplingConfig", g: TimeFn | None) -> str:
    """``cfg.start``; ``auto`` is ``base`` with the trained diffusion, ``spread`` when re-tuned (see
    ``Interpolant.sample_start``)."""
    if cfg.start == "auto":
        return "base" if g is None else "spread"
    if cfg.start not in ("base", "spread"):
        raise ValueError(f"unknown start {cfg.start!r}; choose auto, base or spread")
    return cfg.start


def start_state(
    interpolant: Interpolant, ref: Tensor, start: str, t0: float, *, generator: rng.Generator,
) -> Tensor:
    """The state at the first grid time t0: the base point (``base``) or the interpolant's spread at t0."""
    if start == "base":
        return interpolant.sample_base(ref, generator=generator)
    return interpolant.sample_start(ref, t0, generator=generator)


def _network_drift(
    model: Callable[..., Tensor], history: Tensor, n: int, context: Tensor | ContextDraw
) -> S.Drift:
    """f(x, t) = model(x, t, ref = history[:, n - 1], context frame, gap), the context fixed or drawn per call."""
    ref = history[:, n - 1]
    rows = torch.arange(history.shape[0], device=history.device)

    def drift(x: Tensor, t: Tensor) -> Tensor:
        c = context() if callable(context) else context
        gap = (n - 1) - c
        assert bool((gap >= 1).all()), "context must precede the reference (gap >= 1, docs/METHOD.md §9.16)"
        return model(x, t, ref, history[rows, c], gap.to(x.dtype))

    return drift


def generate_frame(
    model: Callable[..., Tensor], interpolant: Interpolant, history: Tensor, n: int,
    cfg: "SamplingConfig", *, generator: rng.Generator = None, grid: Tensor | None = None,
) -> tuple[Tensor, int]:
    """One new latent frame [B, C, h, w] from ``history[:, :n]`` and the network evaluations it took.

    Draws in order: context (``per_frame``), start, solver noise; ``per_step`` draws a context before each call.
    """
    method = resolve_solver(cfg, interpolant)
    g = sampling_diffusion(cfg, interpolant, method)
    if grid is None:
        grid = S.time_grid(cfg.steps, cfg.t_min, cfg.t_max, cfg.grid, device=history.device)
    batch, device = history.shape[0], history.device
    if cfg.context == "per_frame":
        context: Tensor | ContextDraw = draw_context(batch, n, cfg.past_horizon, generator=generator, device=device)
    elif cfg.context == "per_step":
        def context() -> Tensor:
            return draw_context(batch, n, cfg.past_horizon, generator=generator, device=device)
    else:
        raise ValueError(f"unknown context policy {cfg.context!r}; choose per_frame or per_step")

    ref = history[:, n - 1]
    counter = S.CountingDrift(_network_drift(model, history, n, context))
    drift = interpolant.sampling_drift(counter, x0=ref, g=g)
    x = start_state(interpolant, ref, resolve_start(cfg, g), float(grid[0]), generator=generator)
    diffusion = interpolant.diffusion if g is None else g
    sol = S.solve(method, drift, x, grid, g=diffusion, generator=generator)  # type: ignore[arg-type]
    return sol.x, counter.nfe


def _check_generator(generator: torch.Generator | rng.RowGenerators, device: torch.device) -> None:
    if generator.device.type != device.type:
        raise ValueError(f"the generator is on {generator.device}, the latents on {device}: use one on {device}")


def rollout(
    model: nn.Module | Callable[..., Tensor], interpolant: Interpolant, cond_latents: Tensor,
    n_generate: int, cfg: "SamplingConfig", generator: rng.Generator = None, norm: LatentNorm = LatentNorm(),
) -> RolloutResult:
    """Generate ``n_generate`` frames after ``cond_latents`` [B, n0, C, h, w], one future per row.

    ``model(z, t, ref, context, gap) -> [B, C, h, w]`` runs in eval mode under no_grad (modes restored after), on
    the latents' device. ``generator`` (same device; None: seeded with ``cfg.seed``) drives every draw; a
    :class:`pipeline.core.rng.RowGenerators` gives each row its own stream, independent of the batch. ``norm``: the
    standardisation the network was trained with (its checkpoint's); the result is in latent space either way, with
    the conditioning frames returned unchanged.
    """
    if cond_latents.ndim != 5:
        raise ValueError(f"cond_latents must be [B, n0, C, h, w], got {list(cond_latents.shape)}")
    if n_generate < 0:
        raise ValueError(f"n_generate must be >= 0, got {n_generate}")
    cfg.validate()
    device = cond_latents.device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    _check_generator(generator, device)
    method = resolve_solver(cfg, interpolant)
    sampling_diffusion(cfg, interpolant, method)  # configuration errors before any work

    batch, n0 = cond_latents.shape[:2]
    if n0 < 1:
        raise ValueError("need at least one conditioning frame")
    dup = n0 == 1  # docs/METHOD.md §6 step 1: distinct reference and context indices, same latent
    flow_cond = norm.to_flow(cond_latents)
    start = flow_cond.repeat(1, 2, 1, 1, 1) if dup else flow_cond
    n_first = start.shape[1]
    history = torch.empty((batch, n_first + n_generate, *cond_latents.shape[2:]), dtype=cond_latents.dtype,
                          device=device)
    history[:, :n_first] = start
    grid = S.time_grid(cfg.steps, cfg.t_min, cfg.t_max, cfg.grid, device=device)

    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    if modes:
        model.eval()
    nfe: list[int] = []
    try:
        with torch.no_grad():
            for n in range(n_first, n_first + n_generate):
                frame, used = generate_frame(model, interpolant, history, n, cfg, generator=generator, grid=grid)
                history[:, n] = frame
                nfe.append(used)
    finally:
        for module, training in modes:  # each submodule's own mode back (model.train() would set them all)
            module.training = training
    if len(set(nfe)) > 1:
        raise RuntimeError(f"network evaluations differ between frames: {nfe}")
    per_frame = nfe[0] if nfe else 0
    latents = norm.to_latent(history[:, 1:] if dup else history)
    latents[:, :n0] = cond_latents  # exactly, not up to the standardisation's rounding
    return RolloutResult(latents, per_frame, sum(nfe), method, cfg.steps - 1)


def sample(
    model: nn.Module | Callable[..., Tensor], interpolant: Interpolant, cond_latents: Tensor,
    n_generate: int, cfg: "SamplingConfig", generator: rng.Generator = None, norm: LatentNorm = LatentNorm(),
) -> SampleResult:
    """``cfg.n_samples`` futures for each of the B videos of ``cond_latents`` [B, n0, C, h, w].

    Rollouts run video-major, ``cfg.batch_size`` at a time; one generator makes the result depend on the batch
    size, a :class:`pipeline.core.rng.RowGenerators` of B * n_samples (video-major) does not.
    """
    cfg.validate()
    if cond_latents.ndim != 5 or cond_latents.shape[0] == 0:
        raise ValueError(f"cond_latents must be [B, n0, C, h, w] with B >= 1, got {list(cond_latents.shape)}")
    device = cond_latents.device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    rows = cond_latents.repeat_interleave(cfg.n_samples, dim=0)
    if isinstance(generator, rng.RowGenerators) and len(generator) != rows.shape[0]:
        raise ValueError(f"{len(generator)} row generators for {rows.shape[0]} rollouts (videos x n_samples)")
    parts: list[Tensor] = []
    result: RolloutResult | None = None
    for i in range(0, rows.shape[0], cfg.batch_size):
        part = generator[i : i + cfg.batch_size] if isinstance(generator, rng.RowGenerators) else generator
        result = rollout(model, interpolant, rows[i : i + cfg.batch_size], n_generate, cfg, part, norm)
        parts.append(result.latents)
    assert result is not None
    latents = torch.cat(parts).view(cond_latents.shape[0], cfg.n_samples, *parts[0].shape[1:])
    return SampleResult(latents, result.nfe_per_frame, result.solver, result.steps)

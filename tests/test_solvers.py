"""Solvers: grid and step bookkeeping, and Gaussian problems with known answers integrated end to end.

The Gaussian problems (tests/gaussian_cases.py) use the exact drift E[target | I_t = x], so the only errors are
discretisation and sampling; each tolerance is checked to reject the same run on a grid with one step too many
(the reference Euler-Maruyama's off-by-one, docs/METHOD.md §9.5) or one too few.
"""

from __future__ import annotations

import math

import pytest
import torch

from gaussian_cases import GaussianCase, describe, euler_maruyama_moments, moments_ok, standard_normal
from pipeline.core import interpolants as I
from pipeline.core import solvers as S

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _overshoot(grid: torch.Tensor) -> torch.Tensor:
    """The reference EM's effective grid: one more step of the same size past the end."""
    return torch.cat([grid, grid[-1:] + (grid[-1] - grid[-2])])


# ----------------------------------------------------------------------------------------------------------
# Bookkeeping
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "quadratic", "cosine"])
def test_time_grid(kind: str) -> None:
    g = S.time_grid(100, kind=kind)
    assert g.shape == (100,) and g.dtype == F64
    assert float(g[0]) == 1e-4 and float(g[-1]) == 1 - 1e-4
    assert bool((g[1:] > g[:-1]).all())
    if kind == "linear":
        assert math.isclose(float(g[1] - g[0]), 0.9998 / 99, rel_tol=1e-12)
    with pytest.raises(ValueError):
        S.time_grid(1)
    with pytest.raises(ValueError):
        S.time_grid(10, 0.5, 0.5)


def test_time_grid_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown grid kind"):
        S.time_grid(10, kind="log")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "method,evals_per_step,visits",
    [("euler", 1, "left"), ("heun", 2, "both"), ("euler_maruyama", 1, "left"), ("heun_sde", 2, "both")],
)
def test_steps_nfe_and_end_time(method: str, evals_per_step: int, visits: str) -> None:
    """N grid times -> N - 1 steps, the right NFE, drift seen at the right times, and integration ends exactly
    at grid[-1]: with dx/dt = 1 the result is x0 + (t_max - t_min), not + one extra dt."""
    grid = S.time_grid(11)
    f = S.CountingDrift(lambda x, t: torch.ones_like(x))
    x0 = torch.zeros(3, 2, dtype=F64)
    sol = S.solve(method, f, x0, grid, g=lambda t: torch.zeros_like(t), generator=torch.Generator().manual_seed(0))
    assert sol.steps == 10 and sol.nfe == f.nfe == 10 * evals_per_step
    torch.testing.assert_close(sol.x, torch.full_like(x0, 1 - 2e-4), rtol=0, atol=1e-12)
    if visits == "left":
        assert f.times == pytest.approx(grid[:-1].tolist())
    else:
        expected = [t for k in range(10) for t in (float(grid[k]), float(grid[k + 1]))]
        assert f.times == pytest.approx(expected)


@pytest.mark.parametrize("method", ["euler_maruyama", "heun_sde"])
def test_sde_noise_injections_and_determinism(method: str) -> None:
    """With f = 0 and g = 1 the final variance counts the noisy steps: all but the last one."""
    grid = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    f = lambda x, t: torch.zeros_like(x)  # noqa: E731
    g = lambda t: torch.ones_like(t)  # noqa: E731
    x0 = torch.zeros(200_000, 1, dtype=F64)
    run = lambda seed, last=False: getattr(S, method)(  # noqa: E731
        f, g, x0, grid, generator=torch.Generator().manual_seed(seed), noise_last_step=last
    ).x
    a, b = run(0), run(0)
    assert torch.equal(a, b) and not torch.equal(a, run(1))
    assert abs(float(a.var()) - 0.5) < 0.01  # steps 0.25 + 0.25 noisy, last step (0.5) deterministic
    assert abs(float(run(2, last=True).var()) - 1.0) < 0.02
    two_points = getattr(S, method)(f, g, x0[:10], grid[:2], generator=torch.Generator().manual_seed(0)).x
    assert torch.equal(two_points, x0[:10])  # a single step is the last one: no noise


def test_heun_is_second_order() -> None:
    """dx/dt = -x cos(t) on [0, 1]: halving the step divides Euler's error by ~2, Heun's by ~4."""
    f = lambda x, t: -x * torch.cos(t).view(-1, 1)  # noqa: E731
    x0 = torch.ones(1, 1, dtype=F64)
    exact = math.exp(-math.sin(1.0))
    err = {}
    for name, solver in (("euler", S.euler), ("heun", S.heun)):
        e = [abs(float(solver(f, x0, S.time_grid(n, 0.0, 1.0)).x) - exact) for n in (21, 41)]
        err[name] = e[0] / e[1]
    assert 1.8 < err["euler"] < 2.2 and 3.6 < err["heun"] < 4.4, err


def test_solve_rejects_bad_input() -> None:
    x = torch.zeros(2, 1)
    f = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="diffusion"):
        S.solve("euler_maruyama", f, x, S.time_grid(3))
    with pytest.raises(ValueError, match="unknown method"):
        S.solve("rk4", f, x, S.time_grid(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="increasing"):
        S.euler(f, x, torch.tensor([0.0, 0.5, 0.4]))


# ----------------------------------------------------------------------------------------------------------
# Gaussian problems with known answers
# ----------------------------------------------------------------------------------------------------------

LINEAR = GaussianCase("gaussian", 1.0, 0.0, r=torch.zeros(2, dtype=F64), m=torch.tensor([2.0, -1.0], dtype=F64),
                      s=torch.tensor([0.5, 1.5], dtype=F64))
OURS = GaussianCase("previous", 2.0, 0.1, r=torch.tensor([0.5, 0.0, 1.0], dtype=F64),
                    m=torch.tensor([1.0, 2.0, -1.0], dtype=F64), s=torch.tensor([0.5, 0.5, 0.3], dtype=F64))


def _target(case: GaussianCase):
    return case.x1_mean, case.s**2


@pytest.mark.parametrize("method,n,mean_tol,var_tol", [("heun", 51, 2e-3, 2e-3), ("euler", 101, 2e-3, 0.04)])
def test_linear_ode_gaussian_to_gaussian(method: str, n: int, mean_tol: float, var_tol: float) -> None:
    """`linear`: N(0, 1) -> N(m, s^2) with the exact velocity. Start draws are standardised, and the exact
    velocity is affine, so sample moments carry no sampling error: tolerances are tight."""
    interp = I.linear()
    x = standard_normal((4000, 2), torch.Generator().manual_seed(0))  # = sample_base for the gaussian base
    mean, var = _target(LINEAR)
    grid = S.time_grid(n)
    sol = S.solve(method, interp.sampling_drift(LINEAR.drift), x, grid)
    assert moments_ok(sol.x, mean, var, mean_tol, var_tol), describe(sol.x, mean, var)
    for bad in (_overshoot(grid), grid[:-1]):  # one step too many / too few
        wrong = S.solve(method, LINEAR.drift, x, bad).x
        assert not moments_ok(wrong, mean, var, mean_tol, var_tol), describe(wrong, mean, var)


def test_ours_euler_maruyama_matches_its_exact_discrete_moments() -> None:
    """`ours` with Euler-Maruyama on the reference grid (N = 51 here): the particle moments equal the exact
    moments of the N - 1 step scheme (computed by recursion) within sampling error, and not those of the
    reference's N-step loop. (EM's own bias is large here: about -7% of the mean shift at N = 101.)"""
    interp = I.ours()
    n_particles = 50_000
    x_ref = OURS.r.expand(n_particles, 3).clone()
    x = interp.sample_base(x_ref)
    grid = S.time_grid(51)
    sol = S.euler_maruyama(interp.sampling_drift(OURS.drift, x_ref), interp.diffusion, x, grid,
                           generator=torch.Generator().manual_seed(1))
    mean, var = euler_maruyama_moments(OURS, grid, OURS.r, torch.zeros(3, dtype=F64))
    mean_tol, var_tol = 4 / math.sqrt(n_particles), 4 * math.sqrt(2 / n_particles)
    assert moments_ok(sol.x, mean, var, mean_tol, var_tol), describe(sol.x, mean, var)
    wrong = S.euler_maruyama(OURS.drift, interp.diffusion, x, _overshoot(grid),
                             generator=torch.Generator().manual_seed(1)).x
    assert not moments_ok(wrong, mean, var, mean_tol, var_tol), describe(wrong, mean, var)


def test_ours_sde_reaches_the_target_law() -> None:
    """`ours` from the point mass x_ref: stochastic Heun on the reference grid (N = 101) gives x1's law
    N(x_ref + m, s^2) to within sampling error plus a small bias; one step too many is rejected."""
    interp = I.ours()
    n_particles = 40_000
    x_ref = OURS.r.expand(n_particles, 3).clone()
    x = interp.sample_base(x_ref)
    grid = S.time_grid(101)
    mean, var = _target(OURS)
    mean_tol, var_tol = 0.005 + 4 / math.sqrt(n_particles), 0.01 + 4 * math.sqrt(2 / n_particles)
    drift = interp.sampling_drift(OURS.drift, x_ref)
    sol = S.heun_sde(drift, interp.diffusion, x, grid, generator=torch.Generator().manual_seed(2))
    assert moments_ok(sol.x, mean, var, mean_tol, var_tol), describe(sol.x, mean, var)
    wrong = S.heun_sde(drift, interp.diffusion, x, _overshoot(grid), generator=torch.Generator().manual_seed(2)).x
    assert not moments_ok(wrong, mean, var, mean_tol, var_tol), describe(wrong, mean, var)


@pytest.mark.parametrize(
    "g_name,grid_kind,start",
    [("eps(1-t)^4", "linear", "base"), ("2 sigma", "linear", "base"), ("sigma/2", "quadratic", "start")],
)
def test_diffusion_retuning_keeps_the_target_law(g_name: str, grid_kind: str, start: str) -> None:
    """The drift trained for sigma, re-tuned for another g(t) via the score formula, still ends at N(x_ref + m, s^2).
    g < sigma forgets the start slowly and is stiff near 0: it needs the spread start and a grid fine near t_min."""
    interp = I.ours()
    g = {"eps(1-t)^4": I.OneMinusTPower(4, 0.1), "2 sigma": I.scaled(interp.sigma, 2.0),
         "sigma/2": I.scaled(interp.sigma, 0.5)}[g_name]
    n_particles = 30_000
    gen = torch.Generator().manual_seed(3)
    x_ref = OURS.r.expand(n_particles, 3).clone()
    grid = S.time_grid(101, kind=grid_kind)
    x = interp.sample_base(x_ref) if start == "base" else interp.sample_start(x_ref, float(grid[0]), generator=gen)
    counter = S.CountingDrift(OURS.drift)
    drift = interp.sampling_drift(counter, x_ref, g=g)
    sol = S.heun_sde(drift, g, x, grid, generator=gen)
    assert counter.nfe == sol.nfe == 200
    mean, var = _target(OURS)
    tol_extra = 0.04 if g_name == "sigma/2" else 0.015
    mean_tol, var_tol = 0.01 + 4 / math.sqrt(n_particles), tol_extra + 4 * math.sqrt(2 / n_particles)
    assert moments_ok(sol.x, mean, var, mean_tol, var_tol), describe(sol.x, mean, var)


def test_linear_retuned_into_an_sde() -> None:
    """The `linear` velocity re-tuned with g(t) = 0.5 (1 - t) gives an SDE with the same end law N(m, s^2)."""
    interp = I.linear()
    n_particles = 30_000
    gen = torch.Generator().manual_seed(4)
    x = interp.sample_base(torch.zeros(n_particles, 2, dtype=F64), generator=gen)
    g = I.OneMinusTPower(1, 0.5)
    sol = S.heun_sde(interp.sampling_drift(LINEAR.drift, g=g), g, x, S.time_grid(101), generator=gen)
    mean, var = _target(LINEAR)
    assert moments_ok(sol.x, mean, var, 0.01 + 4 / math.sqrt(n_particles), 0.01 + 4 * math.sqrt(2 / n_particles)), (
        describe(sol.x, mean, var)
    )

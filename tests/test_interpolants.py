"""Interpolants: boundary values, targets as time derivatives, presets, loss, score algebra, config checks."""

from __future__ import annotations

import math

import pytest
import torch

from gaussian_cases import GaussianCase
from pipeline.core import interpolants as I
from pipeline.run.config import ConfigError, InterpolantConfig, config_from_dict

SHAPE = (5, 4, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _draws(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=dtype) for _ in range(4)]  # x0, x1, x_ref, xi


ALL = [
    I.linear(),
    I.ours(),
    I.make_interpolant("gaussian", "t2", 0.3),
    I.make_interpolant("previous", "t", 0.5),
]


@pytest.mark.parametrize("interp", ALL, ids=["linear", "ours", "gaussian-t2-0.3", "previous-t-0.5"])
def test_boundary_values(interp: I.StochasticInterpolant) -> None:
    x0, x1, x_ref, xi = _draws()
    if interp.base == "previous":
        x0 = x_ref
    zeros, ones = torch.zeros(SHAPE[0], dtype=x1.dtype), torch.ones(SHAPE[0], dtype=x1.dtype)
    torch.testing.assert_close(interp.interpolate(zeros, x0, x1, xi), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(interp.interpolate(ones, x0, x1, xi), x1, rtol=0, atol=1e-12)
    pair0 = interp.training_pair(x1, x_ref, zeros, x0=None if interp.base == "previous" else x0, xi=xi)
    torch.testing.assert_close(pair0.xt, x_ref if interp.base == "previous" else x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("interp", ALL, ids=["linear", "ours", "gaussian-t2-0.3", "previous-t-0.5"])
def test_target_is_time_derivative(interp: I.StochasticInterpolant) -> None:
    """Noise-free part = d/dt(alpha x0 + beta x1) by autograd; the rest = sigma'(t) sqrt(t) xi, not gamma' xi."""
    x0, x1, _, xi = _draws(1)
    t = torch.tensor([0.0, 0.03, 0.4, 0.77, 1.0], dtype=torch.float64)
    zero = torch.zeros_like(xi)

    def mean_part(tt: torch.Tensor) -> torch.Tensor:  # alpha x0 + beta x1 (interpolate() has sqrt(t): inf slope at 0)
        tb = tt.view(-1, 1, 1, 1)
        return interp.alpha(tb) * x0 + interp.beta(tb) * x1

    _, dmean = torch.func.jvp(mean_part, (t,), (torch.ones_like(t),))
    torch.testing.assert_close(interp.target(t, x0, x1, zero), dmean, rtol=1e-12, atol=1e-12)

    tt = t.clone().requires_grad_(True)
    (dsigma,) = torch.autograd.grad(interp.sigma(tt).sum(), tt)  # elementwise: d sigma / dt per time
    expected_noise = dsigma.view(-1, 1, 1, 1) * t.sqrt().view(-1, 1, 1, 1) * xi
    torch.testing.assert_close(interp.target(t, x0, x1, xi) - interp.target(t, x0, x1, zero), expected_noise)
    torch.testing.assert_close(dsigma, torch.full_like(t, -interp.sigma.scale))


@pytest.mark.parametrize("coef", [I.TPower(1), I.TPower(2), I.TPower(3, 0.5), I.OneMinusTPower(1, 0.1), I.OneMinusTPower(4, 2.0)])
def test_coefficient_derivatives(coef: I.Coefficient) -> None:
    t = torch.linspace(0.01, 0.99, 7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(coef(t).sum(), t)
    torch.testing.assert_close(coef.deriv(t.detach()), grad)


def test_preset_values() -> None:
    x0, x1, x_ref, xi = _draws(2)
    t = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    tb = t.view(-1, 1, 1, 1)

    lin = I.linear()
    assert (lin.name, lin.base, lin.is_sde) == ("linear", "gaussian", False)
    pair = lin.training_pair(x1, x_ref, t, x0=x0, xi=xi)
    torch.testing.assert_close(pair.xt, (1 - tb) * x0 + tb * x1)
    torch.testing.assert_close(pair.target, x1 - x0)

    ours = I.ours()
    assert (ours.name, ours.base, ours.is_sde) == ("ours", "previous", True)
    pair = ours.training_pair(x1, x_ref, t, xi=xi)
    torch.testing.assert_close(pair.xt, (1 - tb) * x_ref + tb**2 * x1 + 0.1 * (1 - tb) * tb.sqrt() * xi)
    torch.testing.assert_close(pair.target, -x_ref + 2 * tb * x1 - 0.1 * tb.sqrt() * xi)
    torch.testing.assert_close(pair.x0, x_ref)
    # beta'(0) = 0: the drift target at t = 0 is -x_ref, whatever x1 and xi are.
    torch.testing.assert_close(ours.target(torch.zeros(5, dtype=x1.dtype), x_ref, x1, xi), -x_ref)
    # diffusion = sigma = 0.1 (1 - t)
    torch.testing.assert_close(ours.diffusion(t), 0.1 * (1 - t))
    assert (ours.t_min, ours.t_max) == (1e-4, 1 - 1e-4)
    assert (lin.reference_solver, ours.reference_solver) == ("euler", "euler_maruyama")
    assert (lin.heun_solver, ours.heun_solver) == ("heun", "heun_sde")


def test_training_pair_draws_and_determinism() -> None:
    _, x1, x_ref, _ = _draws(3, dtype=torch.float32)
    for interp in (I.linear(), I.ours()):
        t = interp.sample_t(SHAPE[0], generator=torch.Generator().manual_seed(5))
        a = interp.training_pair(x1, x_ref, t, generator=torch.Generator().manual_seed(7))
        b = interp.training_pair(x1, x_ref, t, generator=torch.Generator().manual_seed(7))
        for u, v in zip(a, b):
            assert torch.equal(u, v)
        assert a.xt.shape == a.target.shape == SHAPE and a.xt.dtype == torch.float32
        if interp.base == "gaussian":
            assert not torch.equal(a.x0, x_ref) and abs(float(a.x0.std()) - 1) < 0.1
        else:
            assert torch.equal(a.x0, x_ref)
    with pytest.raises(ValueError, match="previous-frame base"):
        I.ours().training_pair(x1, x_ref, t, x0=x_ref)
    with pytest.raises(ValueError, match="shape"):
        I.ours().training_pair(x1, x_ref[:, :2], t)


def test_sample_t_range() -> None:
    interp = I.ours()
    t = interp.sample_t(20000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (20000,) and t.dtype == torch.float32
    assert float(t.min()) >= 1e-4 and float(t.max()) <= 1 - 1e-4
    assert abs(float(t.mean()) - 0.5) < 0.01


def test_loss_is_per_example_sum_then_batch_mean() -> None:
    pred = torch.zeros(3, 4, 8, 8)
    target = torch.zeros(3, 4, 8, 8)
    target[0] = 1.0  # 256 squared errors of 1
    target[1, 0, 0, 0] = 2.0  # one squared error of 4
    per = I.StochasticInterpolant.per_example_loss(pred, target)
    torch.testing.assert_close(per, torch.tensor([256.0, 4.0, 0.0]))
    torch.testing.assert_close(I.ours().loss(pred, target), torch.tensor(260.0 / 3))
    with pytest.raises(ValueError):
        I.ours().loss(pred, target[:, :2])


CASES = [
    ("previous", 2.0, 0.1),  # ours
    ("gaussian", 1.0, 0.0),  # linear
    ("gaussian", 2.0, 0.3),
    ("previous", 1.0, 0.5),
]


@pytest.mark.parametrize("base,p,eps", CASES)
def test_score_from_exact_drift_is_exact_score(base: str, p: float, eps: float) -> None:
    """The score formula of docs/METHOD.md §3 (and its gaussian-base analogue), fed the exact drift, gives the exact
    Gaussian score; re-tuning with g = sigma leaves the drift unchanged."""
    dt = torch.float64
    case = GaussianCase(base, p, eps, r=torch.tensor([0.5, -1.0], dtype=dt), m=torch.tensor([1.0, 0.3], dtype=dt),
                        s=torch.tensor([0.5, 2.0], dtype=dt))
    interp = I.make_interpolant(base, "t" if p == 1 else "t2", eps)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1e-3, 0.05, 0.3, 0.6, 0.95, 0.999], dtype=dt)
    x = case.mean(t) + case.var(t).sqrt() * torch.randn(6, 2, generator=g, dtype=dt)
    x0 = case.r.expand(6, 2) if base == "previous" else None
    b = case.drift(x, t)
    torch.testing.assert_close(interp.score(b, x, t, x0), case.score(x, t), rtol=1e-7, atol=1e-9)
    if interp.is_sde:
        torch.testing.assert_close(interp.retuned_drift(b, x, t, interp.sigma, x0), b)
    new_g = I.OneMinusTPower(4, 0.2)
    expected = b + 0.5 * (new_g(t) ** 2 - interp.sigma(t) ** 2).view(-1, 1) * case.score(x, t)
    torch.testing.assert_close(interp.retuned_drift(b, x, t, new_g, x0), expected, rtol=1e-7, atol=1e-9)


def test_score_guards() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="x0"):
        I.ours().score(x, x, torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="eps = 0"):
        I.make_interpolant("previous", "t2", 0.0).score(x, x, torch.full((2,), 0.5), x)
    # t = 0 is clamped to t_floor for the score: finite output
    out = I.ours().retuned_drift(x + 1, x, torch.zeros(2), I.OneMinusTPower(4, 0.1), x)
    assert torch.isfinite(out).all()
    f = lambda x, t: x  # noqa: E731
    assert I.ours().sampling_drift(f, x) is f
    assert I.ours().sampling_drift(f, x, g=I.OneMinusTPower(1, 0.1)) is f  # equal to sigma
    with pytest.raises(ValueError, match="x0"):
        I.ours().sampling_drift(f, None, g=I.OneMinusTPower(4, 0.1))


@pytest.mark.parametrize("base,p,eps", CASES)
def test_training_target_regresses_to_closed_form_drift(base: str, p: float, eps: float) -> None:
    """Least squares of the module's targets on its I_t recovers the closed-form drift E[target | I_t]: ties the
    training objective to the drifts the solver tests integrate."""
    dt = torch.float64
    n = 200_000
    r, m, s = 0.7, -0.4, 0.6
    case = GaussianCase(base, p, eps, r=torch.tensor([r], dtype=dt), m=torch.tensor([m], dtype=dt),
                        s=torch.tensor([s], dtype=dt))
    interp = I.make_interpolant(base, "t" if p == 1 else "t2", eps)
    g = torch.Generator().manual_seed(11)
    x_ref = torch.full((n, 1), r, dtype=dt)
    x1 = case.x1_mean + s * torch.randn(n, 1, generator=g, dtype=dt)
    for tv in (0.1, 0.5, 0.9):
        t = torch.full((n,), tv, dtype=dt)
        pair = interp.training_pair(x1, x_ref, t, generator=g)
        xt, y = pair.xt[:, 0], pair.target[:, 0]
        slope = float(((xt - xt.mean()) * (y - y.mean())).mean() / xt.var())
        intercept_at_mean = float(y.mean())  # fitted line at x = E[I_t]
        tt = torch.tensor([tv], dtype=dt)
        exact_slope = float(case.gain(tt)[0, 0])
        exact_at_mean = float(case.drift(case.mean(tt), tt)[0, 0])
        resid_sd = float((y - (y.mean() + slope * (xt - xt.mean()))).std())
        se_slope = resid_sd / (float(xt.std()) * math.sqrt(n))
        se_mean = float(y.std()) / math.sqrt(n)
        assert abs(slope - exact_slope) < 5 * se_slope + 1e-9, (tv, slope, exact_slope)
        assert abs(intercept_at_mean - exact_at_mean) < 5 * se_mean + 1e-9, (tv, intercept_at_mean, exact_at_mean)


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------


def test_config_presets_resolve_and_build() -> None:
    cfg = config_from_dict({})
    assert cfg.interpolant.kind == "ours"
    built = I.build_interpolant(cfg.interpolant)
    assert built == I.ours()
    lin = config_from_dict({"interpolant": {"kind": "linear"}}).interpolant
    assert I.build_interpolant(lin) == I.linear()
    custom = InterpolantConfig(kind="custom", base="gaussian", beta="t2", eps=0.2, t_min=0.0, t_max=1.0)
    custom.validate()
    built = I.build_interpolant(custom)
    assert (built.base, built.beta, built.sigma.scale, built.t_min, built.t_max) == ("gaussian", I.TPower(2.0), 0.2, 0.0, 1.0)
    # restating a preset's own value is allowed
    config_from_dict({"interpolant": {"kind": "ours", "beta": "t2", "eps": 0.1}})


def test_config_ours_eps_sets_ours_noise_only() -> None:
    """ours_eps is ours' noise strength (the reference's noise_strength); a config may keep it while training linear."""
    ours = config_from_dict({"interpolant": {"ours_eps": 1.0}}).interpolant
    assert ours.resolved() == {"base": "previous", "beta": "t2", "eps": 1.0}
    assert I.build_interpolant(ours).sigma.scale == 1.0 and I.build_interpolant(ours) != I.ours()
    lin = config_from_dict({"interpolant": {"kind": "linear", "ours_eps": 1.0}}).interpolant
    assert I.build_interpolant(lin) == I.linear()
    custom = config_from_dict({"interpolant": {"kind": "custom", "base": "previous", "beta": "t2", "eps": 0.3, "ours_eps": 1.0}})
    assert custom.interpolant.resolved()["eps"] == 0.3
    config_from_dict({"interpolant": {"ours_eps": 1.0, "eps": 1.0}})  # restating it is allowed
    with pytest.raises(ConfigError, match=r"interpolant\.eps.*ours_eps"):
        config_from_dict({"interpolant": {"ours_eps": 1.0, "eps": 0.1}})


@pytest.mark.parametrize(
    "section,key",
    [
        ({"kind": "custom", "base": "gaussian", "beta": "t"}, "interpolant.eps"),
        ({"kind": "ours", "eps": 0.2}, "interpolant.eps"),
        ({"ours_eps": 0.0}, "interpolant.ours_eps"),
        ({"kind": "linear", "ours_eps": float("inf")}, "interpolant.ours_eps"),
        ({"kind": "linear", "base": "previous"}, "interpolant.base"),
        ({"kind": "custom", "base": "gaussian", "beta": "t", "eps": -0.1}, "interpolant.eps"),
        ({"kind": "custom", "base": "previous", "beta": "t2", "eps": 0.0}, "interpolant.eps"),
        ({"t_min": 0.5, "t_max": 0.5}, "interpolant.t_min"),
        ({"t_min": -0.1}, "interpolant.t_min"),
        ({"t_max": 1.5}, "interpolant.t_min"),
        ({"kind": "sde"}, "interpolant.kind"),
        ({"beta": "t3"}, "interpolant.beta"),
        ({"eps": "big"}, "interpolant.eps"),
    ],
)
def test_config_rejects_bad_values(section: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"interpolant": section})


def test_ours_eps_enters_the_training_fingerprint_only_where_it_acts() -> None:
    """A linear run does not go stale when ours_eps changes, and runs recorded before the key existed (ours at the
    default 0.1) keep their fingerprints; ours at another eps is another training."""
    from pipeline.stages.train_state import training_inputs

    def interp(**section):
        return training_inputs(config_from_dict({"interpolant": section}), "cache")["interpolant"]

    assert "ours_eps" not in interp() and "ours_eps" not in interp(kind="linear", ours_eps=1.0)
    assert interp(kind="linear", ours_eps=1.0) == interp(kind="linear")
    assert interp(ours_eps=1.0)["ours_eps"] == 1.0 and interp(ours_eps=1.0) != interp()

"""An interpolant defined in a file of the researcher's own: derivatives by autograd, the sampler's drift and its
re-tuning derived from it, clear config errors, fingerprints, and one run through the make chain that goes stale
when the file changes."""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, TINY_SETTINGS, make_tiny_vqvae, run_make
from pipeline.core import interpolants as I
from pipeline.core.interpolant_kinds import build
from pipeline.run.config import ConfigError, config_from_dict
from test_runs import FAST

MODULE = "my_interpolants"
SOURCE = '''"""Interpolants of a researcher's own."""
import math

import torch

from pipeline.core.interpolants import Interpolant


class Trig(Interpolant):
    base = "gaussian"

    def alpha(self, t):
        return torch.cos(math.pi / 2 * t)

    def beta(self, t):
        return torch.sin(math.pi / 2 * t)

    def sigma(self, t):
        return torch.zeros_like(t)


class QuadraticNoise(Interpolant):
    base = "previous"

    def alpha(self, t):
        return 1 - t

    def beta(self, t):
        return t**2

    def sigma(self, t):
        return 0.1 * (1 - t) ** 2


class NoEnd(Trig):
    def alpha(self, t):
        return 1 + 0 * t


class Silent(QuadraticNoise):
    def sigma(self, t):
        return 0 * t


def three(t_min, t_max):
    return 3


def needs_more(t_min, t_max, width):
    return Trig(t_min, t_max)
'''


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    """A directory holding ``my_interpolants.py``, on sys.path while this module's tests run."""
    root = tmp_path_factory.mktemp("interpolants")
    (root / f"{MODULE}.py").write_text(SOURCE)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    sys.modules.pop(MODULE, None)


def test_autograd_derivatives_match_the_analytic_ones_and_drive_the_target(module_dir) -> None:
    trig, quad = build(f"{MODULE}:Trig"), build(f"{MODULE}:QuadraticNoise")
    t = torch.linspace(0.0, 1.0, 9, dtype=torch.float64)
    half_pi = math.pi / 2
    with torch.no_grad():  # as in the sampler
        torch.testing.assert_close(trig.alpha_dot(t), -half_pi * torch.sin(half_pi * t))
        torch.testing.assert_close(trig.beta_dot(t), half_pi * torch.cos(half_pi * t))
        torch.testing.assert_close(trig.sigma_dot(t), torch.zeros_like(t))
        torch.testing.assert_close(quad.alpha_dot(t), -torch.ones_like(t))
        torch.testing.assert_close(quad.beta_dot(t), 2 * t)
        torch.testing.assert_close(quad.sigma_dot(t), -0.2 * (1 - t))
    g = torch.Generator().manual_seed(0)
    x0, x1, xi = (torch.randn(9, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    tb = t.view(-1, 1, 1, 1)
    pair = trig.training_pair(x1, x1, t, x0=x0, xi=xi)
    torch.testing.assert_close(pair.xt, torch.cos(half_pi * tb) * x0 + torch.sin(half_pi * tb) * x1)
    torch.testing.assert_close(pair.target, half_pi * (torch.cos(half_pi * tb) * x1 - torch.sin(half_pi * tb) * x0))
    assert (trig.is_sde, trig.reference_solver, trig.heun_solver) == (False, "euler", "heun")
    assert (quad.is_sde, quad.reference_solver, quad.name) == (True, "euler_maruyama", "QuadraticNoise")
    assert (trig.t_min, trig.t_max) == (1e-4, 1 - 1e-4)


def test_score_and_retuned_drift_follow_the_definition(module_dir) -> None:
    """The class with autograd derivatives gives the score and re-tuned drift of the same interpolant written with
    analytic coefficients; with g = sigma the drift is unchanged."""
    quad = build(f"{MODULE}:QuadraticNoise")
    same = I.StochasticInterpolant(I.OneMinusTPower(1.0), I.TPower(2.0), I.OneMinusTPower(2.0, 0.1), "previous")
    g = torch.Generator().manual_seed(1)
    b, x, x0 = (torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([1e-3, 0.1, 0.3, 0.5, 0.8, 0.95], dtype=torch.float64)
    torch.testing.assert_close(quad.score(b, x, t, x0), same.score(b, x, t, x0))
    quartic = I.OneMinusTPower(4.0, 0.2)
    torch.testing.assert_close(quad.retuned_drift(b, x, t, quartic, x0), same.retuned_drift(b, x, t, quartic, x0))
    f = lambda x, t: x  # noqa: E731
    assert quad.sampling_drift(f, x0, g=quad.sigma) is f
    torch.testing.assert_close(I.scaled(quad.sigma, 2.0)(t), 0.2 * (1 - t) ** 2)


@pytest.mark.parametrize("kind,message", [
    ("my_interpolants:Nope", "'Nope' is not defined in module my_interpolants"),
    ("no_such_module:Trig", "cannot import module 'no_such_module'"),
    ("my_interpolants:math", "'math' is a module, not a class or function"),
    ("my_interpolants:three", "gave a int, not an interpolant"),
    ("my_interpolants:needs_more", r"failed \(TypeError"),
    ("my_interpolants:NoEnd", r"alpha\(1\) = 1, must be 0"),
    ("my_interpolants:Silent", "previous-frame base needs noise"),
    ("my_interpolants.Trig", "unknown interpolant"),
])
def test_bad_kinds_are_config_errors_naming_the_key(module_dir, kind: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"interpolant\.kind.*" + message):
        config_from_dict({"interpolant": {"kind": kind}})
    with pytest.raises(ConfigError, match=r"interpolant\.eps.*fixed by the definition"):
        config_from_dict({"interpolant": {"kind": f"{MODULE}:Trig", "eps": 0.1}})


def test_a_registered_name_selects_an_interpolant(module_dir, monkeypatch) -> None:
    from pipeline.core import interpolant_kinds as kinds
    from pipeline.stages.train_state import training_inputs

    monkeypatch.setattr(kinds, "REGISTRY", dict(kinds.REGISTRY))
    trig = kinds.load_factory(f"{MODULE}:Trig")
    assert kinds.register("trig")(trig) is trig
    cfg = config_from_dict({"interpolant": {"kind": "trig"}})
    assert isinstance(I.build_interpolant(cfg.interpolant), trig)
    assert training_inputs(cfg, "cache")["interpolant"]["source_sha256"] == kinds.definition(f"{MODULE}:Trig")["source_sha256"]
    for taken in ("ours", "custom", "a:b"):
        with pytest.raises(ValueError, match="cannot register"):
            kinds.register(taken)


def test_the_definition_enters_the_fingerprints_and_built_in_kinds_keep_theirs(module_dir) -> None:
    from pipeline.stages.forecast_state import forecast_inputs
    from pipeline.stages.train_state import training_inputs

    def both(**section):
        cfg = config_from_dict({"interpolant": section})
        return training_inputs(cfg, "cache")["interpolant"], forecast_inputs(cfg, "cache", "ckpt")["interpolant"]

    unset = {"base": None, "beta": None, "eps": None, "t_min": 1e-4, "t_max": 0.9999}
    assert both(kind="linear") == ({"kind": "linear", **unset}, {"kind": "linear", "base": "gaussian", "beta": "t", "eps": 0.0})
    assert both() == ({"kind": "ours", **unset}, {"kind": "ours", "base": "previous", "beta": "t2", "eps": 0.1})
    kind = f"{MODULE}:Trig"
    train, forecast = both(kind=kind)
    assert train["kind"] == forecast["kind"] == kind and train["source_sha256"] == forecast["source_sha256"]
    path = module_dir / f"{MODULE}.py"
    path.write_text(SOURCE.replace("math.pi / 2 * t", "math.pi * t / 2"))
    try:
        assert both(kind=kind)[0]["source_sha256"] != train["source_sha256"]
        assert both(kind=kind)[1]["source_sha256"] != forecast["source_sha256"]
    finally:
        path.write_text(SOURCE)


def test_a_custom_interpolant_trains_forecasts_and_evaluates_through_make_and_goes_stale_when_edited(
        tmp_path: Path, monkeypatch) -> None:
    from pipeline.run.config import load_config

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["data"]["root"] = str(tmp_path / "data")
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    settings = [*TINY_SETTINGS, *FAST, f"vqvae.ckpt={tmp_path / 'vq.pt'}"]
    make_tiny_vqvae(load_config(tmp_path / "demo.yaml", settings), tmp_path / "vq.pt")
    code = tmp_path / "code"
    code.mkdir()
    (code / "trig_interpolant.py").write_text(SOURCE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])]))
    kind = "trig_interpolant:Trig"
    args = " ".join(f"--set {shlex.quote(s)}" for s in [*settings, f"interpolant.kind={kind}"])
    variables = [f"CONFIG={tmp_path / 'demo.yaml'}", f"OUT={tmp_path / 'out'}", "RUN=trig", f"ARGS={args}"]

    done = run_make("eval", *variables)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "out" / "demo" / "runs" / "trig"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["interp"] == kind and metrics["run"] == "trig"
    recorded = json.loads((run / "run.json").read_text())["inputs"]["interpolant"]
    assert recorded["kind"] == kind and len(recorded["source_sha256"]) == 64
    assert f"trig ({kind})" in (tmp_path / "out" / "demo" / "report.md").read_text()

    (code / "trig_interpolant.py").write_text(SOURCE.replace("return torch.zeros_like(t)", "return 0.0 * t"))
    stale = run_make("train", *variables)
    assert stale.returncode != 0 and "interpolant.source_sha256" in stale.stdout + stale.stderr, stale.stderr[-3000:]

"""The flow network: reference checkpoint layout at the paper's size, and a small config end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.core import interpolants as I
from pipeline.core import solvers as S
from pipeline.run.config import ConfigError, ModelConfig, config_from_dict
from pipeline.core.model import PositionEmbedding2D, build_model, count_parameters, time_embedding

KEYS = Path(__file__).parent / "fixtures" / "flow_vector_field_regressor_keys.json"
SMALL = ModelConfig(state_size=4, state_res=[4, 6], inner_dim=32, depth=2, mid_depth=1, heads=4, ffn_mult=2,
                    dropout=0.0, gap_hidden=16, max_positions=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(cfg: ModelConfig, b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (b, cfg.state_size, *cfg.state_res)
    z, ref, ctx = (torch.randn(shape, generator=g) for _ in range(3))
    t = torch.rand(b, generator=g)
    gap = torch.randint(1, 10, (b,), generator=g).float()
    return z, t, ref, ctx, gap


def test_paper_size_matches_reference_state_dict() -> None:
    expected = json.loads(KEYS.read_text())
    model = build_model(ModelConfig())
    sd = model.state_dict()
    assert list(sd) == list(expected)  # names and order
    for name, spec in expected.items():
        assert list(sd[name].shape) == spec["shape"], name
        assert str(sd[name].dtype).removeprefix("torch.") == spec["dtype"], name
    assert count_parameters(model) == 98_084_868
    # positional tables U(-1, 1), not N(0, 1)
    pos = model.position_encoding.row_embed.weight
    assert float(pos.min()) >= -1 and float(pos.max()) <= 1 and abs(float(pos.std()) - 1 / math.sqrt(3)) < 0.01
    model.eval()
    z, t, ref, ctx, gap = _inputs(ModelConfig(), 1)
    with torch.no_grad():
        out = model(z, t, ref, ctx, gap)
    assert out.shape == z.shape and torch.isfinite(out).all()


def test_small_model_forward_backward() -> None:
    torch.manual_seed(0)
    model = build_model(SMALL)
    z, t, ref, ctx, gap = _inputs(SMALL, 3)
    out = model(z, t, ref, ctx, gap)
    assert out.shape == (3, 4, 4, 6)
    out.pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    # every input reaches the output
    for i in range(5):  # z, t, ref, context, gap
        args = [a.clone().requires_grad_(a.is_floating_point()) for a in (z, t, ref, ctx, gap)]
        (g,) = torch.autograd.grad(model(*args).sum(), args[i])
        assert g.abs().sum() > 0
    # examples are independent (no batch mixing) and eval mode is deterministic
    model.eval()
    with torch.no_grad():
        full = model(z, t, ref, ctx, gap)
        one = model(z[1:2], t[1:2], ref[1:2], ctx[1:2], gap[1:2])
    torch.testing.assert_close(full[1:2], one, rtol=1e-5, atol=1e-5)


def test_small_model_with_interpolant_and_solver() -> None:
    """The pieces compose: a training step on the `ours` pair, then a short Euler-Maruyama rollout of one frame."""
    torch.manual_seed(2)
    model = build_model(SMALL)
    interp = I.ours()
    x1, _, ref, ctx, gap = _inputs(SMALL, 4)
    gen = torch.Generator().manual_seed(0)
    t = interp.sample_t(4, generator=gen)
    pair = interp.training_pair(x1, ref, t, generator=gen)
    loss = interp.loss(model(pair.xt, t, ref, ctx, gap), pair.target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    model.eval()
    drift = S.CountingDrift(lambda x, tt: model(x, tt, ref, ctx, gap))
    with torch.no_grad():
        sol = S.solve(interp.reference_solver, interp.sampling_drift(drift, ref), interp.sample_base(ref),
                      S.time_grid(6), g=interp.diffusion, generator=gen)
    assert sol.x.shape == ref.shape and sol.nfe == drift.nfe == 5


def test_time_and_gap_matter() -> None:
    torch.manual_seed(1)
    model = build_model(SMALL).eval()
    z, t, ref, ctx, gap = _inputs(SMALL, 2)
    with torch.no_grad():
        base = model(z, t, ref, ctx, gap)
        assert not torch.allclose(base, model(z, t + 0.1, ref, ctx, gap))
        assert not torch.allclose(base, model(z, t, ref, ctx, gap + 1))
        assert not torch.allclose(base, model(z, t, ctx, ref, gap))  # reference and context are not symmetric


def test_time_embedding_layout() -> None:
    t = torch.tensor([0.0, 0.5])
    emb = time_embedding(t, 8)  # 4 frequencies 10000^(-k/4)
    freqs = torch.tensor([10000.0 ** (-k / 4) for k in range(4)])
    angles = 200 * t.unsqueeze(1) * freqs
    torch.testing.assert_close(emb, torch.cat([angles.cos(), angles.sin()], dim=1))
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos half first


def test_position_embedding_layout() -> None:
    pe = PositionEmbedding2D(16, 6)
    grid = pe(2, 3)  # [1, 6, 6], row-major: cell (y, x) at index y * 3 + x
    y, x = 1, 2
    torch.testing.assert_close(grid[0, y * 3 + x], torch.cat([pe.col_embed.weight[x], pe.row_embed.weight[y]]))


def test_gap_below_one_raises() -> None:
    model = build_model(SMALL)
    z, t, ref, ctx, gap = _inputs(SMALL, 2)
    with pytest.raises(ValueError, match="gap must be >= 1"):
        model(z, t, ref, ctx, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="state_res"):
        model(z[..., :3], t, ref[..., :3], ctx[..., :3], gap)
    with pytest.raises(ValueError, match="must match"):
        model(z, t, ref[:, :2], ctx, gap)


@pytest.mark.parametrize(
    "section,key",
    [
        ({"inner_dim": 30, "heads": 4}, "model.heads"),
        ({"inner_dim": 33, "heads": 1}, "model.inner_dim"),
        ({"state_res": [8]}, "model.state_res"),
        ({"depth": 0}, "model.depth"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"state_res": [600, 8]}, "model.max_positions"),
    ],
)
def test_config_rejects_bad_values(section: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"model": section})

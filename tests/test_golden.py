"""Golden equivalence: our modules reproduce outputs of the reference implementations (tests/fixtures/golden/).

CPU, float32. Tolerances (rtol = atol) as the fixtures' README gives them: 1e-4 for the VQVAEs, 1e-5 for the flow
network and sampling, 1e-6 for interpolants and losses, exact equality for code indices. Intended differences
(docs/METHOD.md §9): the reference's Euler-Maruyama takes one step too many (§9.5), so our default sampler is
compared with ``generated_grid_minus_last`` and the reference's ``generated`` is reproduced on a grid extended by
``t_end``; the quantisers' straight-through output is compared by value only (§9.17).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from pipeline.core import interpolants as I
from pipeline.core import rng
from pipeline.core import sampling as SM
from pipeline.core import solvers as S
from pipeline.run.config import ModelConfig, SamplingConfig, VQVAEConfig
from pipeline.core.model import build_model as build_flow
from pipeline.core.model import time_embedding
from pipeline.vqvae import build_model as build_vq
from pipeline.vqvae import river
from pipeline.vqvae.load import load_weights_strict
from pipeline.vqvae.taming import nearest_code

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
VQ_TOL = dict(rtol=1e-4, atol=1e-4)
FLOW_TOL = dict(rtol=1e-5, atol=1e-5)
SAMPLING_TOL = dict(rtol=1e-5, atol=1e-5)
INTERP_TOL = dict(rtol=1e-6, atol=1e-6)

pytestmark = pytest.mark.usefixtures("one_thread")


def _load(name: str) -> dict:
    return torch.load(GOLDEN / f"{name}.pt", weights_only=True)


def _scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def _load_weights(model: nn.Module, fx: dict, name: str) -> nn.Module:
    """The fixture's float16 weights as float32 (integer buffers as they are), loaded strictly; eval mode."""
    assert list(model.state_dict()) == fx["state_dict_keys"]  # the reference's names, in its order
    weights = {k: v.float() if v.is_floating_point() else v for k, v in fx["state_dict"].items()}
    load_weights_strict(model, weights, name)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# KTH: taming VQModel
# ----------------------------------------------------------------------------------------------------------


def _kth_config(fx: dict) -> VQVAEConfig:
    c = fx["config"]
    assert (c["in_channels"], c["out_ch"], c["double_z"]) == (3, 3, False)
    return VQVAEConfig(arch="taming", ch=c["ch"], ch_mult=list(c["ch_mult"]), num_res_blocks=c["num_res_blocks"],
                       attn_resolutions=list(c["attn_resolutions"]), z_channels=c["z_channels"],
                       embed_dim=c["embed_dim"], n_embed=c["n_embed"], dropout=c["dropout"])


@pytest.fixture(scope="module")
def kth() -> tuple[dict, nn.Module]:
    fx = _load("kth_vqvae_small")
    cfg = _kth_config(fx)
    cfg.validate()
    model = build_vq(cfg, fx["config"]["resolution"])
    return fx, _load_weights(model, fx, "kth_vqvae_small.pt")


@torch.no_grad()
def test_kth_encode(kth) -> None:
    fx, model = kth
    assert_close(model.encode(fx["x"]), fx["pre_quant_latents"], **VQ_TOL)


@torch.no_grad()
def test_kth_quantize(kth) -> None:
    fx, model = kth
    z_q, loss, idx = model.quantize(fx["pre_quant_latents"])
    assert torch.equal(idx, fx["indices"])
    assert_close(z_q, fx["quantized_latents"], **VQ_TOL)
    assert_close(loss, _scalar(fx["quantizer_loss"]), **VQ_TOL)
    # the same codes from our own encoder's latents
    assert torch.equal(model.quantize.indices(model.encode(fx["x"])), fx["indices"])


@torch.no_grad()
def test_kth_decode(kth) -> None:
    fx, model = kth
    assert_close(model.decode(fx["pre_quant_latents"]), fx["decoded"], **VQ_TOL)


# ----------------------------------------------------------------------------------------------------------
# CLEVRER: RIVER's VQVAE at 1/4 width with GroupNorm(8)
# ----------------------------------------------------------------------------------------------------------


def _gn8(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=8, num_channels=channels, eps=1e-6, affine=True)


def _small_river(fx: dict) -> river.RiverVQVAE:
    """A RiverVQVAE with the fixture's widths and codebook, every GroupNorm built with 8 groups."""
    c = fx["config"]
    assert c["groupnorm_num_groups"] == 8
    enc, dec, vq = c["encoder"], c["decoder"], c["vector_quantizer"]
    model = river.RiverVQVAE.__new__(river.RiverVQVAE)  # its __init__ hard-codes the full widths
    nn.Module.__init__(model)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(river, "_gn", _gn8)
        model.encoder = river.Encoder(enc["in_channels"], enc["out_channels"], mid_channels=enc["mid_channels"])
        model.decoder = river.Decoder(dec["in_channels"], dec["out_channels"], mid_channels=dec["mid_channels"])
    model.vector_quantizer = river.VectorQuantizer(vq["num_embeddings"], vq["embedding_dimension"], beta=vq["beta"])
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 8 and m.eps == 1e-6 for m in norms)
    return model


@pytest.fixture(scope="module")
def clevrer() -> tuple[dict, nn.Module]:
    fx = _load("clevrer_vqvae_small")
    return fx, _load_weights(_small_river(fx), fx, "clevrer_vqvae_small.pt")


@torch.no_grad()
def test_clevrer_encode(clevrer) -> None:
    fx, model = clevrer
    assert_close(model.encode(fx["x"]), fx["latents"], **VQ_TOL)


@torch.no_grad()
def test_clevrer_quantize(clevrer) -> None:
    fx, model = clevrer
    codebook = model.vector_quantizer.embedding.weight
    assert torch.equal(nearest_code(fx["latents"], codebook), fx["indices"])
    assert torch.equal(nearest_code(model.encode(fx["x"]), codebook), fx["indices"])
    z_q, loss = model.vector_quantizer(fx["latents"])
    assert_close(z_q, fx["quantized_latents"], **VQ_TOL)
    assert_close(model.vector_quantizer.quantize(fx["latents"]), fx["quantized_latents"], **VQ_TOL)
    assert_close(loss, _scalar(fx["vq_loss"]), **VQ_TOL)


@torch.no_grad()
def test_clevrer_decode(clevrer) -> None:
    fx, model = clevrer
    assert_close(model.decode(fx["latents"]), fx["decoded"], **VQ_TOL)  # quantise, then decode (tanh)
    assert_close(model.decoder(fx["quantized_latents"]), fx["decoded"], **VQ_TOL)


# ----------------------------------------------------------------------------------------------------------
# Flow network
# ----------------------------------------------------------------------------------------------------------


def _flow_config(fx: dict, **changes) -> ModelConfig:
    c = fx["config"]
    assert (c["out_norm"], c["activation"], c["norm_first"], c["batch_first"]) == ("ln", "gelu", True, True)
    assert (c["position_embedding"], c["time_embedding_scale"]) == ("learned", 200.0)
    assert c["dim_feedforward"] % c["inner_dim"] == 0
    fields = dict(state_size=c["state_size"], state_res=list(c["state_res"]), inner_dim=c["inner_dim"],
                  depth=c["depth"], mid_depth=c["mid_depth"], heads=c["nhead"],
                  ffn_mult=c["dim_feedforward"] // c["inner_dim"], dropout=c["dropout"],
                  gap_hidden=c["gap_mlp_hidden"], max_positions=c["position_table_rows"])
    fields.update(changes)
    return ModelConfig(**fields)


def _flow_model(fx: dict, **changes) -> nn.Module:
    return _load_weights(build_flow(_flow_config(fx, **changes)), fx, "flow_small.pt")


@pytest.fixture(scope="module")
def flow() -> tuple[dict, nn.Module]:
    fx = _load("flow_small")
    return fx, _flow_model(fx)


def _flow_output(fx: dict, model: nn.Module) -> torch.Tensor:
    assert not model.training  # dropout off
    return model(fx["x_t"], fx["t"], fx["ref"], fx["context"], fx["gap"])


def test_flow_time_embedding(flow) -> None:
    fx, _ = flow
    assert_close(time_embedding(fx["t"], fx["config"]["inner_dim"]), fx["time_embedding"], **FLOW_TOL)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "autograd"])
def test_flow_output(flow, grad: bool) -> None:
    fx, model = flow
    with torch.set_grad_enabled(grad):
        out = _flow_output(fx, model)
    assert_close(out.detach(), fx["output"], **FLOW_TOL)


# ----------------------------------------------------------------------------------------------------------
# Interpolants and the training loss
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interp_fx() -> dict:
    return _load("interpolants")


def test_linear_interpolant(interp_fx) -> None:
    fx, t = interp_fx["linear"], interp_fx["t"]
    interp = I.linear()
    assert not interp.is_sde
    x1 = fx["x1"]
    pair = interp.training_pair(x1, torch.zeros_like(x1), t, x0=fx["x0"], xi=torch.zeros_like(x1))  # no noise term
    assert_close(pair.xt, fx["xt"], **INTERP_TOL)
    assert_close(pair.target, fx["target"], **INTERP_TOL)
    assert_close(interp.loss(fx["pred"], pair.target), _scalar(fx["loss"]), **INTERP_TOL)


def test_ours_interpolant(interp_fx) -> None:
    fx, t = interp_fx["ours"], interp_fx["t"]
    interp = I.ours()
    assert interp.is_sde and float(interp.sigma(torch.tensor(0.0))) == pytest.approx(fx["noise_strength"])
    pair = interp.training_pair(fx["x1"], fx["x0"], t, xi=fx["xi"])  # previous-frame base: x0 = x_ref
    assert torch.equal(pair.x0, fx["x0"])
    assert_close(pair.xt, fx["xt"], **INTERP_TOL)
    assert_close(pair.target, fx["target"], **INTERP_TOL)
    assert_close(interp.sigma(t), fx["sigma"], **INTERP_TOL)
    assert_close(interp.sigma(t) * t.sqrt(), fx["gamma"], **INTERP_TOL)
    assert_close(interp.loss(fx["pred"], pair.target), _scalar(fx["loss"]), **INTERP_TOL)


# ----------------------------------------------------------------------------------------------------------
# Sampling: one generated frame, the reference's random draws replayed
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampling_fx() -> dict:
    return _load("sampling")


class Replay:
    """Stands in for ``pipeline.core.rng.randint``/``randn``: returns the reference's draws in order, checking shapes."""

    def __init__(self, ints: list[torch.Tensor], normals: list[torch.Tensor]):
        self.ints, self.normals = list(ints), list(normals)

    def randint(self, low: int, high: int, shape, *, generator, device=None) -> torch.Tensor:
        assert self.ints, "more integer draws than the reference made"
        value = self.ints.pop(0)
        assert tuple(shape) == tuple(value.shape) and bool(((value >= low) & (value < high)).all())
        return value.clone()

    def randn(self, shape, *, generator, device=None, dtype=None) -> torch.Tensor:
        assert self.normals, "more normal draws than the reference made"
        value = self.normals.pop(0)
        assert tuple(shape) == tuple(value.shape)
        return value.clone().to(dtype or value.dtype)

    def consumed(self) -> bool:
        return not self.ints and not self.normals


@pytest.fixture
def replay(monkeypatch) -> Iterator:
    """``replay(ints, normals)`` installs a :class:`Replay` in ``pipeline.core.rng`` and returns it."""

    def install(ints, normals) -> Replay:
        r = Replay(ints, normals)
        monkeypatch.setattr(rng, "randint", r.randint)
        monkeypatch.setattr(rng, "randn", r.randn)
        return r

    yield install


class GapRecorder(nn.Module):
    """The flow network, recording the gap of every call. Built in eval mode: ``rollout`` restores a training-mode
    model to training mode afterwards, which would switch dropout on in the shared network."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.gaps = net, []
        self.eval()

    def forward(self, z, t, ref, context, gap):
        self.gaps.append(gap.clone())
        return self.net(z, t, ref, context, gap)


def _check_gaps(net: GapRecorder, case: dict) -> None:
    assert net.gaps and all(torch.equal(g, case["gap"]) for g in net.gaps)


@pytest.mark.parametrize("n", [10, 100])
def test_time_grid(sampling_fx, n: int) -> None:
    ref = sampling_fx[f"time_grid_{n}"]
    grid = S.time_grid(n, sampling_fx["t_min"], sampling_fx["t_max"])
    assert_close(grid.float(), ref, **SAMPLING_TOL)
    dts = grid[1:] - grid[:-1]
    assert_close(dts, torch.full_like(dts, sampling_fx[f"dt_{n}"]), **SAMPLING_TOL)


def _sampling_config(fx: dict, n: int) -> SamplingConfig:
    cfg = SamplingConfig(steps=n, t_min=fx["t_min"], t_max=fx["t_max"])  # solver auto, context per frame, g = sigma
    cfg.validate()
    return cfg


@pytest.mark.parametrize("n", [10, 100])
def test_linear_euler(sampling_fx, flow, replay, n: int) -> None:
    case = sampling_fx[f"linear_{n}"]
    draws = replay([case["context_idx"]], [case["z0"]])
    net = GapRecorder(flow[1])
    cond = sampling_fx["cond_latents"]
    res = SM.rollout(net, I.linear(), cond, 1, _sampling_config(sampling_fx, n), torch.Generator())
    assert draws.consumed()
    assert res.solver == "euler" and res.nfe_per_frame == case["nfe"] == n - 1
    assert case["reference_frame_index"] == cond.shape[1] - 1
    _check_gaps(net, case)
    assert torch.equal(res.latents[:, : cond.shape[1]], cond)
    assert_close(res.latents[:, -1], case["generated"], **SAMPLING_TOL)


@pytest.mark.parametrize("n", [10, 100])
def test_ours_euler_maruyama(sampling_fx, flow, replay, n: int) -> None:
    """Our default: N - 1 steps ending at t_max, no noise on the last one (noise em_noise[:N-2])."""
    case = sampling_fx[f"ours_{n}"]
    draws = replay([case["context_idx"]], list(case["em_noise"][: n - 2]))
    net = GapRecorder(flow[1])
    cond = sampling_fx["cond_latents"]
    res = SM.rollout(net, I.ours(), cond, 1, _sampling_config(sampling_fx, n), torch.Generator())
    assert draws.consumed()
    assert res.solver == "euler_maruyama" and res.nfe_per_frame == n - 1
    _check_gaps(net, case)
    assert_close(res.latents[:, -1], case["generated_grid_minus_last"], **SAMPLING_TOL)


@pytest.mark.parametrize("n", [10, 100])
def test_ours_reference_extra_step(sampling_fx, flow, replay, n: int) -> None:
    """The reference as it is (docs/METHOD.md §9.5): N steps of dt ending at t_end = t_max + dt, reproduced by
    integrating over the grid extended by t_end (noise em_noise[:N-1], none on the last step)."""
    case = sampling_fx[f"ours_{n}"]
    assert case["reference_extra_final_step"]
    # t_end = last (float32) grid time + dt
    assert case["t_end"] == pytest.approx(float(sampling_fx[f"time_grid_{n}"][-1]) + sampling_fx[f"dt_{n}"], abs=1e-12)
    draws = replay([case["context_idx"]], list(case["em_noise"][: n - 1]))
    net = GapRecorder(flow[1])
    cond = sampling_fx["cond_latents"]
    grid = torch.cat([sampling_fx[f"time_grid_{n}"].double(), torch.tensor([case["t_end"]], dtype=torch.float64)])
    with torch.no_grad():
        frame, nfe = SM.generate_frame(net, I.ours(), cond, cond.shape[1], _sampling_config(sampling_fx, n),
                                       generator=torch.Generator(), grid=grid)
    assert draws.consumed()
    assert nfe == case["nfe"] == n
    _check_gaps(net, case)
    assert_close(frame, case["generated"], **SAMPLING_TOL)
    # the §9.5 difference is far above the tolerance
    assert (case["generated"] - case["generated_grid_minus_last"]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------
# Sensitivity: perturbations the tolerances must catch
# ----------------------------------------------------------------------------------------------------------


def test_flow_four_heads_fails(flow) -> None:
    """Same weights with 4 attention heads instead of the reference's 8: the output no longer matches."""
    fx, _ = flow
    model = _flow_model(fx, heads=4)
    with torch.no_grad():
        out = _flow_output(fx, model)
    assert (out - fx["output"]).abs().max() > 100 * FLOW_TOL["atol"]
    with pytest.raises(AssertionError):
        assert_close(out, fx["output"], **FLOW_TOL)


@pytest.mark.parametrize("which", ["kth", "clevrer"])
def test_groupnorm_bias_perturbation_fails(kth, clevrer, which: str) -> None:
    """+0.01 on one decoder GroupNorm bias entry: ``decoded`` moves beyond the VQ tolerance."""
    fx, model = kth if which == "kth" else clevrer
    latents = fx["pre_quant_latents"] if which == "kth" else fx["latents"]
    model = copy.deepcopy(model)
    norm = model.decoder.mid.block_1.norm1 if which == "kth" else model.decoder.attn_norm
    with torch.no_grad():
        norm.bias[0] += 0.01
        out = model.decode(latents)
    assert (out - fx["decoded"]).abs().max() > 10 * VQ_TOL["atol"]
    with pytest.raises(AssertionError):
        assert_close(out, fx["decoded"], **VQ_TOL)

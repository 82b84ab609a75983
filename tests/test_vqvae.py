"""Frozen VQVAEs: exact tensor layouts, published checkpoint wrappers, strict + safe loading, encode/decode shapes."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from pipeline.run.config import VQVAEConfig
from pipeline.run.safe_load import CheckpointReadError, PickledRecord, find_records, safe_torch_load
from pipeline.vqvae import CheckpointMismatchError, build_model, build_vqvae
from pipeline.vqvae.load import CheckpointFormatError, extract_state_dict
from pipeline.vqvae.river import RiverVQVAE
from pipeline.vqvae.taming import VQModel
from real_formats import HyperParams, lightning_checkpoint, random_weights

FIXTURES = Path(__file__).parent / "fixtures"
KTH = VQVAEConfig(arch="taming")  # defaults are the KTH f8_small values
CLEVRER = VQVAEConfig(arch="river")
SMALL = VQVAEConfig(arch="taming", ch=32, ch_mult=[1, 2, 2, 2], n_embed=64, attn_resolutions=[8], batch_size=3)


class Payload:
    """A malicious object: unpickling it would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _layout(sd: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in sd.items()}


def _cfg(base: VQVAEConfig, ckpt: Path) -> VQVAEConfig:
    return dataclasses.replace(base, ckpt=str(ckpt))


# ---------------------------------------------------------------------------------------------- layouts


def test_taming_state_dict_equals_kth_listing():
    expected = json.loads((FIXTURES / "vqvae_kth_taming_f8_keys.json").read_text())
    with torch.device("meta"):
        model = build_model(KTH, 64)
    got = _layout(model.state_dict())
    assert list(got) == list(expected)  # same names in the same order
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == 63_777_455


def test_river_state_dict_equals_clevrer_listing():
    expected = json.loads((FIXTURES / "vqvae_clevrer_river_keys.json").read_text())
    with torch.device("meta"):
        model = build_model(CLEVRER, 128)
    got = _layout(model.state_dict())
    assert list(got) == list(expected)
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == 7_329_703


# ---------------------------------------------------------------------------------------------- published wrappers


def test_lightning_ckpt_loads_encodes_decodes(tmp_path):
    """KTH: {'state_dict': model + loss.* weights, optimizer_states, epoch, pickled hyper-parameter object}."""
    weights = random_weights(build_model(KTH, 64), seed=1)
    ckpt = lightning_checkpoint(weights, HyperParams())
    path = tmp_path / "kth_vqvae.ckpt"
    torch.save(ckpt, path)

    raw = safe_torch_load(path)  # the pickled HyperParams comes back as an inert record
    assert isinstance(raw["hyper_parameters"], PickledRecord)
    assert raw["hyper_parameters"].state["embed_dim"] == 4

    vq = build_vqvae(_cfg(KTH, path), 64)
    loaded = vq.model.state_dict()
    assert list(loaded) == list(weights)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert vq.checkpoint_sha256() == hashlib.sha256(path.read_bytes()).hexdigest()

    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = vq.encode(x)
    assert z.shape == (2, 4, 8, 8) and vq.latent_shape() == (4, 8, 8)
    y = vq.decode(z)
    assert y.shape == (2, 3, 64, 64) and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1  # taming output is clamped


def test_river_pth_loads_encodes_decodes(tmp_path):
    """CLEVRER: {'model': {'module.' + name: tensor}} (DDP-saved), plus ignored extras."""
    weights = random_weights(RiverVQVAE(), seed=2)
    path = tmp_path / "clevrer_vqvae.pth"
    torch.save({"model": {"module." + k: v for k, v in weights.items()}, "optimizer": {"state": {}}, "step": 5}, path)

    vq = build_vqvae(_cfg(CLEVRER, path), 128)
    loaded = vq.model.state_dict()
    assert list(loaded) == list(weights)
    for k in weights:
        assert torch.equal(loaded[k], weights[k]) and loaded[k].dtype == weights[k].dtype, k
    assert loaded["decoder.residuals.0.1.norm.num_batches_tracked"].dtype == torch.int64

    x = torch.rand(2, 3, 128, 128) * 2 - 1
    z = vq.encode(x)
    assert z.shape == (2, 4, 16, 16) and vq.latent_shape() == (4, 16, 16)
    y = vq.decode(z)
    assert y.shape == (2, 3, 128, 128)
    assert y.abs().max() <= 1
    assert not vq.training and not vq.model.decoder.residuals[0][1].norm.training  # BatchNorm in eval


def test_module_prefix_is_stripped_only_at_the_start():
    state, layout = extract_state_dict({"model": {"module.encoder.module.x": torch.zeros(1)}})
    assert layout == "river" and list(state) == ["encoder.module.x"]


def test_flat_state_dict_loads_and_float16_is_cast_back(tmp_path):
    weights = random_weights(build_model(SMALL, 64), seed=3)
    path = tmp_path / "flat.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, path)
    vq = build_vqvae(_cfg(SMALL, path), 64)
    for k, v in vq.model.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, weights[k].half().float())
    z = vq.encode(torch.zeros(5, 3, 64, 64))  # 5 frames in chunks of batch_size=3
    assert z.shape == (5, 4, 8, 8)


# ---------------------------------------------------------------------------------------------- failures


def test_missing_and_renamed_weights_are_listed(tmp_path):
    weights = random_weights(build_model(SMALL, 64), seed=4)
    weights.pop("decoder.conv_out.bias")
    weights["encoder.conv_in.renamed"] = weights.pop("encoder.conv_in.weight")
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": weights}, path)
    with pytest.raises(CheckpointMismatchError) as info:
        build_vqvae(_cfg(SMALL, path), 64)
    err = info.value
    assert set(err.missing) == {"decoder.conv_out.bias", "encoder.conv_in.weight"}
    assert err.unexpected == ["encoder.conv_in.renamed"]
    message = str(err)
    assert str(path) in message
    for name in ("decoder.conv_out.bias", "encoder.conv_in.weight", "encoder.conv_in.renamed"):
        assert name in message


def test_shape_mismatch_is_reported(tmp_path):
    weights = random_weights(build_model(SMALL, 64), seed=5)
    weights["quantize.embedding.weight"] = torch.zeros(65, 4)
    path = tmp_path / "wrong_codebook.pt"
    torch.save(weights, path)
    with pytest.raises(CheckpointMismatchError, match=r"quantize\.embedding\.weight \(file \[65, 4\], model \[64, 4\]\)"):
        build_vqvae(_cfg(SMALL, path), 64)


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    weights = random_weights(build_model(SMALL, 64), seed=6)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": weights, "callbacks": {"x": Payload(marker)}}, path)
    vq = build_vqvae(_cfg(SMALL, path), 64)  # weights still load
    assert torch.equal(vq.model.state_dict()["decoder.conv_out.bias"], weights["decoder.conv_out.bias"])
    assert not marker.exists()

    # the payload alone, as the whole file, in the legacy (non-zip) format and as a bare pickle
    for i, save in enumerate(
        (
            lambda p: torch.save(Payload(marker), p),
            lambda p: torch.save({"a": Payload(marker)}, p, _use_new_zipfile_serialization=False),
        )
    ):
        p = tmp_path / f"payload{i}.pt"
        save(p)
        obj = safe_torch_load(p)
        records = find_records(obj)
        assert len(records) == 1 and records[0].__record_name__ == "system"
        assert "touch" in repr(records[0])
        assert not marker.exists()
    bare = tmp_path / "bare.pkl"
    bare.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointReadError, match="bare.pkl"):
        safe_torch_load(bare)
    assert not marker.exists()


def test_unreadable_files_name_the_file(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(100)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 8)
    for path in (truncated, garbage, tmp_path / "absent.pt"):
        with pytest.raises(CheckpointReadError, match=path.name):
            safe_torch_load(path)
    empty = tmp_path / "empty_dict.pt"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(CheckpointFormatError, match="empty_dict.pt"):
        build_vqvae(_cfg(SMALL, empty), 64)


# ---------------------------------------------------------------------------------------------- wrapper behaviour


def test_frozen_wrapper_contract():
    vq = build_vqvae(SMALL, 64, load_weights=False)
    assert not any(p.requires_grad for p in vq.parameters())
    vq.train()
    assert not vq.training and not vq.model.training
    assert vq.checkpoint_sha256() is None
    assert vq.latent_shape(128) == (4, 16, 16)

    clip = torch.rand(2, 5, 3, 64, 64) * 2 - 1
    z = vq.encode_clip(clip)
    assert z.shape == (2, 5, 4, 8, 8)
    # chunking must not change the result: frame (1, 3) alone equals its slot in the batched call
    single = vq.encode(clip[1, 3:4])
    torch.testing.assert_close(single[0], z[1, 3], rtol=1e-5, atol=1e-5)
    x = vq.decode_clip(z)
    assert x.shape == clip.shape

    # decode snaps to the codebook: latents already equal to code vectors decode like their snapped version
    snapped = vq.model.quantize.quantize(z[0])
    torch.testing.assert_close(vq.decode(snapped), vq.decode(z[0]))
    with pytest.raises(ValueError):
        vq.encode(torch.zeros(1, 1, 64, 64))


def test_taming_quantiser_nearest_code():
    model = VQModel(**{k: v for k, v in dataclasses.asdict(SMALL).items() if k in ("ch", "ch_mult", "n_embed", "attn_resolutions")})
    book = model.quantize.embedding.weight.detach()
    z = torch.randn(2, 4, 3, 3)
    idx = model.quantize.indices(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    brute = torch.cdist(flat, book).argmin(1).reshape(2, 3, 3)
    assert torch.equal(idx, brute)


def test_a_file_cannot_change_shared_objects_through_build(tmp_path):
    """BUILD (set state) on an allow-listed function would change it for the whole process: refused."""
    import torch._utils as tu

    before = tu._rebuild_tensor_v2.__defaults__
    path = tmp_path / "build.pt"
    path.write_bytes(b"ctorch._utils\n_rebuild_tensor_v2\n(N}S'__defaults__'\n(I7\ntstb.")
    with pytest.raises(CheckpointReadError, match="refusing to set the state of '_rebuild_tensor_v2'"):
        safe_torch_load(path)
    assert tu._rebuild_tensor_v2.__defaults__ == before


@pytest.mark.parametrize("protocol", [2, 5])
def test_every_pickle_protocol_loads_weights_and_keeps_foreign_objects_inert(tmp_path, protocol):
    """Protocol 2 zip files go through torch's weights-only loader, others (4, 5) through the restricted one:
    the same weights and records either way, the payload never run, and BUILD on a shared global refused."""
    marker = tmp_path / "pwned"
    weights = {"w": torch.arange(6.0).reshape(2, 3), "p": torch.nn.Parameter(torch.ones(2)), "h": torch.zeros(2).half()}
    path = tmp_path / f"proto{protocol}.ckpt"
    torch.save({"state_dict": weights, "hyper_parameters": HyperParams(), "hook": Payload(marker), "b": b"xy",
                "s": {1, 2}}, path, pickle_protocol=protocol)
    raw = safe_torch_load(path)
    assert all(torch.equal(raw["state_dict"][k], v) for k, v in weights.items())
    assert isinstance(raw["state_dict"]["p"], torch.nn.Parameter) and raw["b"] == b"xy" and raw["s"] == {1, 2}
    assert raw["hyper_parameters"].state["embed_dim"] == 4 and raw["hook"].__record_name__ == "system"
    assert not marker.exists()
    build = tmp_path / f"build{protocol}.pt"  # BUILD on collections.OrderedDict, the class shared by the process
    build.write_bytes(pickle.dumps(collections.OrderedDict, protocol=protocol)[:-1] + b"N}X\x01\x00\x00\x00x\x88s\x86b.")
    with pytest.raises(CheckpointReadError, match="refusing to set the state of 'OrderedDict'"):
        safe_torch_load(build)
    assert not hasattr(collections.OrderedDict, "x")
